"""Any local BERT-architecture sequence-classification checkpoint as the policy's classifier, in place
of the bundled artifact: a Hugging Face directory (config.json, weights, tokenizer files), loaded
from disk only.

Its labels (`id2label` in config.json) must be wardgate's (classifiers/labels.py) and include
`unsafe`; a `safe` label is allowed beside them in a single-label (softmax) model. A model whose
`problem_type` is `multi_label_classification` is read label by label (sigmoid); any other as one
softmax. Either way the exported graph gives, in LABELS order, the log-odds of each label's
probability (a label the checkpoint lacks: a score of ~0), so that the runtime treats it like an
artifact. Its scores are used as they are (no calibration), on the raw text (no normalisation: the
checkpoint was not trained on normalised text).
"""

from __future__ import annotations

import json
from pathlib import Path

from classifiers.artifact import ArtifactConfig
from classifiers.labels import LABELS, ClassifierError

ABSENT_LOGIT = -30.0  # sigmoid(-30) ~ 1e-13: a label the checkpoint does not score never fires
MAX_WINDOW = 512


def read_checkpoint_config(directory: Path) -> dict | None:
    """The checkpoint's config.json, or None when `directory` holds a wardgate artifact instead."""
    try:
        raw = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ClassifierError(f"{directory}: cannot read config.json: {exc}") from None
    if not isinstance(raw, dict) or "format" in raw or "model_type" not in raw:
        return None
    return raw


def checkpoint_labels(directory: Path, raw: dict) -> list[str]:
    """The checkpoint's output labels in column order, checked against ours."""
    if raw.get("model_type") not in ("bert", "roberta", "xlm-roberta", "distilbert", "electra"):
        raise ClassifierError(f"{directory}: model_type {raw.get('model_type')!r} is not a BERT-architecture encoder")
    id2label = raw.get("id2label") or {}
    labels = [id2label.get(str(index), id2label.get(index)) for index in range(len(id2label))]
    foreign = [label for label in labels if label not in LABELS and label != "safe"]
    if not labels or foreign or "unsafe" not in labels:
        raise ClassifierError(
            f"{directory}: the checkpoint's labels {labels} must be wardgate's ({', '.join(LABELS)}; "
            "'safe' allowed beside them) and include 'unsafe' — set id2label in its config.json")
    return labels


def checkpoint_config(directory: Path, raw: dict) -> ArtifactConfig:
    checkpoint_labels(directory, raw)
    return ArtifactConfig(added_characters=[], mode="checkpoint", normalize=False,
                          max_length=min(MAX_WINDOW, int(raw.get("max_position_embeddings", MAX_WINDOW))))


def load_tokenizer(directory: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ClassifierError(f"{directory}: no usable tokenizer files: {exc}") from None


def exportable_checkpoint(directory: Path, raw: dict):
    """A torch module: (input_ids, attention_mask) → per-label log-odds in LABELS order."""
    import torch
    from transformers import AutoModelForSequenceClassification

    labels = checkpoint_labels(directory, raw)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ClassifierError(f"{directory}: cannot load the checkpoint: {exc}") from None
    model.set_attn_implementation("eager")
    columns = [labels.index(name) if name in labels else -1 for name in LABELS]
    multi_label = raw.get("problem_type") == "multi_label_classification"

    class LabelLogOdds(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
            if not multi_label:  # log p - log(1 - p) of the softmax: sigmoid of it gives p back
                log_p = torch.log_softmax(logits, dim=-1)
                logits = log_p - torch.log1p(-log_p.exp().clamp(max=1 - 1e-7))
            absent = torch.full_like(logits[:, :1], ABSENT_LOGIT)
            return torch.cat([logits[:, [column]] if column >= 0 else absent for column in columns], dim=1)

    return LabelLogOdds().eval(), model.config
