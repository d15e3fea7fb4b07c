"""The BERT risk classifier: loading, int8 inference, micro-batching, training, evaluation, and the
shipped adapter artifact with its model card. Not built yet (issue 5)."""
