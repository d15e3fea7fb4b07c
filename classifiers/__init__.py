"""The BERT risk classifier: data mapping, training, the shipped delta artifact with its model card,
ONNX Runtime int8 inference (export.py, runtime.py), micro-batching, local BERT checkpoints, and
offline scoring and evaluation."""
