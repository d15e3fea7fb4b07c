"""Loading a local Hugging Face causal-LM directory, at the requested precision and device.

Nothing is ever downloaded: every load is `local_files_only`, and a directory that is not a
complete model fails with a `ModelLoadError` that says what is missing.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Quantize = Literal["int8", "none"]
DeviceChoice = Literal["auto", "cpu", "cuda"]

# No hub look-ups even by accident (a typo'd path must not turn into a download attempt).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class ModelLoadError(Exception):
    """The directory cannot be served; the message says why, for the operator."""


@dataclass
class LoadedModel:
    name: str
    directory: Path
    model: Any  # a transformers PreTrainedModel (kept untyped: transformers is imported lazily)
    tokenizer: Any
    device: str
    quantize: Quantize
    max_context: int


def resolve_device(choice: DeviceChoice) -> str:
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("--device cuda was asked for, but no CUDA device is available")
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return choice


def load_model(directory: Path, quantize: Quantize = "int8", device: DeviceChoice = "auto") -> LoadedModel:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # progress bars would break the JSON-lines log stream

    directory = Path(directory)
    if not directory.is_dir():
        raise ModelLoadError(f"{directory}: not a directory")
    if not (directory / "config.json").is_file():
        raise ModelLoadError(f"{directory}: no config.json — not a Hugging Face model directory")
    resolved_device = resolve_device(device)
    try:
        config = AutoConfig.from_pretrained(directory, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"{directory}: cannot load the model: {exc}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    if quantize == "int8":
        model = _quantize_int8(model, resolved_device)
    elif resolved_device == "cuda":
        model = model.to("cuda", dtype=torch.float16)
    max_context = getattr(config, "max_position_embeddings", None) or 2048
    return LoadedModel(directory.name, directory, model, tokenizer, resolved_device, quantize, max_context)


def _quantize_int8(model: Any, device: str) -> Any:
    import torch

    if device == "cuda":
        # Weight-only int8 on the GPU: torchao keeps the model a plain nn.Module (no special
        # loading path) and runs on any recent NVIDIA card.
        try:
            from torchao.quantization import Int8WeightOnlyConfig, quantize_
        except ImportError:
            raise ModelLoadError("int8 on CUDA needs torchao: pip install torchao (or use --quantize none)") from None
        model = model.to("cuda", dtype=torch.bfloat16)
        quantize_(model, Int8WeightOnlyConfig())
        return model
    # Dynamic int8 on CPU: Linear weights stored as int8, activations quantized per batch. PyTorch
    # marks the quantized-tensor API as deprecated in favour of torchao, but it is the CPU path that
    # needs no extra dependency and still runs fbgemm/onednn kernels.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
