"""DP-SGD fine-tuning of a classifier artifact with Opacus, resumable, stopping at the budget.

What is trained: the head and the top `trainable_layers` transformer layers (default 1); the
embeddings and lower layers stay the starting model's. Fewer trained parameters mean less noise in
total for the same per-step noise scale, and a step costs a forward pass plus the top layers'
backward pass. The vocabulary is the starting model's: characters are never added from private
text (the added rows would reveal which characters the data holds).

Opacus pitfalls handled: the position and token-type embeddings (and the extended word embeddings,
which no Opacus grad sampler knows) are frozen; the model is in train mode when wrapped; it stays on
the CPU it was built on (no device move after wrapping).

Per-sample clipping: `ghost` (Opacus fast gradient clipping: per-sample gradient norms without
materialising per-sample gradients) for example-level privacy; `hooks` (per-sample gradients) for
user-level privacy, where each user's rows are summed into one per-user gradient before clipping,
which ghost clipping (norms per row only) cannot do.
"""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from opacus import PrivacyEngine
from opacus.utils.batch_memory_manager import BatchMemoryManager
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

from classifiers.artifact import ArtifactConfig, load_artifact, read_config, save_artifact
from classifiers.labels import LABELS, ClassifierError
from classifiers.registry import resolve
from classifiers.train import collate, encode, label_tensors
from privacy.dp.accounting import steps_within_budget
from privacy.dp.data import PrivateData, check_delta, default_delta, read_private_data
from privacy.dp.report import write_dp_model_card

CHECKPOINT = "dp-checkpoint.pt"


@dataclass(frozen=True)
class DPConfig:
    epsilon: float = 1.0
    delta: float | None = None  # None: 1e-5 or 1/N^1.1, whichever is smaller
    private: bool = True  # False: the non-private baseline on the same data and loop
    base: str = "builtin"  # the artifact to start from
    user_field: str | None = None  # privacy per user (their examples grouped) instead of per example
    max_per_user: int = 8
    epochs: int = 3
    batch_size: int = 128  # expected logical batch, in privacy units (Poisson sampling)
    physical_batch_size: int = 32  # what goes through the model at once (BatchMemoryManager)
    max_grad_norm: float = 1.0
    learning_rate: float = 5e-4
    trainable_layers: int = 1
    max_length: int = 64
    grad_sample_mode: str = "ghost"  # ghost | hooks; user-level privacy always uses hooks
    accountant: str = "prv"
    seed: int = 0
    checkpoint_every: int = 20
    max_steps: int | None = None  # stop (checkpointed) after this many steps in all; run again to go on


# A resumed run must agree with its checkpoint on everything that shapes the model or the privacy
# spent; more epochs may be asked for (the noise stays the checkpoint's, the budget stops it).
_RESUMABLE_CHANGES = ("epochs", "physical_batch_size", "checkpoint_every", "max_steps")


class MaskedLoss(torch.nn.Module):
    """Per row: the mean binary cross-entropy over the labels the row really has, times the row's
    weight (1/examples of its user, so that a user's rows add up to the mean over their examples)."""

    def __init__(self) -> None:
        super().__init__()
        self.reduction = "mean"  # Opacus's ghost clipping switches it to "none" for the per-sample losses

    def forward(self, logits, labels, mask, weight):
        losses = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        per_row = (losses * mask).sum(1) / mask.sum(1).clamp(min=1.0) * weight
        return per_row.mean() if self.reduction == "mean" else per_row


def _unit_tensors(data: PrivateData, tokenizer, max_length: int) -> TensorDataset:
    """One item per privacy unit: (ids, attention, labels, mask, weight), each with a row per example
    slot; a unit with fewer examples than the widest has weight-0 rows."""
    examples = [example for unit in data.units for example in unit]
    ids = encode(tokenizer, [example.text for example in examples], max_length)
    input_ids, attention = collate(ids, list(range(len(ids))))
    labels, mask = label_tensors(examples)
    slots = max(len(unit) for unit in data.units)
    shape = (len(data.units), slots)
    tensors = [torch.zeros(*shape, input_ids.shape[1], dtype=torch.long),
               torch.zeros(*shape, input_ids.shape[1], dtype=torch.long),
               torch.zeros(*shape, len(LABELS)), torch.zeros(*shape, len(LABELS)), torch.zeros(*shape)]
    row = 0
    for index, unit in enumerate(data.units):
        for slot in range(len(unit)):
            for tensor, value in zip(tensors, (input_ids[row], attention[row], labels[row], mask[row],
                                               1.0 / len(unit)), strict=True):
                tensor[index, slot] = value
            row += 1
    return TensorDataset(*tensors)


def _select_trainable(model, layers: int) -> list[str]:
    """Freeze all but the head and the top `layers` layers; return the names the artifact stores
    (every parameter the starting artifact had trainable, so the output is a complete artifact)."""
    stored = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    encoder_layers = model.encoder.encoder.layer
    if not 0 <= layers <= len(encoder_layers):
        raise ClassifierError(f"--trainable-layers must be 0 to {len(encoder_layers)}")
    model.requires_grad_(False)
    for module in [*encoder_layers[len(encoder_layers) - layers:], model.head]:
        module.requires_grad_(True)
    return stored


def _merge_user_rows(parameters: list[torch.nn.Parameter], owner: torch.Tensor, units: int) -> None:
    """Per-row gradients → per-user gradients (the sum of each user's rows), so that Opacus clips
    and noises per user."""
    for parameter in parameters:
        rows = parameter.grad_sample
        parameter.grad_sample = torch.zeros(units, *rows.shape[1:], dtype=rows.dtype).index_add_(0, owner, rows)


def _batch_rows(batch):
    """Flatten a batch of units into its example rows (dropping empty slots), trimmed to the
    longest row; and the unit each row belongs to. Poisson sampling may draw no unit at all: then one
    row of weight 0 stands in, whose gradient is exactly zero, so that the step still adds its noise
    (the model cannot run on zero rows)."""
    input_ids, attention, labels, mask, weight = batch
    if weight.shape[0] == 0:
        input_ids, attention, labels, mask, weight = (torch.zeros(1, *tensor.shape[1:], dtype=tensor.dtype)
                                                      for tensor in batch)
        attention[0, 0, 0] = 1
        return input_ids[0, :1, :1], attention[0, :1, :1], labels[0, :1], mask[0, :1], weight[0, :1], \
            torch.zeros(1, dtype=torch.long)
    present = weight.flatten() > 0
    owner = torch.arange(weight.shape[0]).repeat_interleave(weight.shape[1])[present]
    input_ids, attention = input_ids.flatten(0, 1)[present], attention.flatten(0, 1)[present]
    width = max(1, int(attention.sum(1).max())) if len(attention) else 1
    return (input_ids[:, :width], attention[:, :width], labels.flatten(0, 1)[present], mask.flatten(0, 1)[present],
            weight.flatten()[present], owner)


def _settings(config: DPConfig) -> dict:
    return {key: value for key, value in asdict(config).items() if key not in _RESUMABLE_CHANGES}


def dp_train(data_path: Path, out: Path, config: DPConfig, show_progress: bool = True) -> dict:
    """Fine-tune into `out` (resuming from its checkpoint if there is one); the report, also written
    into the artifact's config.json metrics and model card."""
    with warnings.catch_warnings():
        # Known and stated elsewhere: the noise comes from torch's PRNG (README), and the frozen
        # layers below the trained ones make the backward hooks fire on outputs only.
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return _dp_train(data_path, out, config, show_progress)


def _dp_train(data_path: Path, out: Path, config: DPConfig, show_progress: bool) -> dict:
    started = time.monotonic()
    data = read_private_data(data_path, config.user_field, config.max_per_user, config.seed)
    unit_name = "user" if config.user_field else "example"
    units = len(data.units)
    delta = config.delta if config.delta is not None else default_delta(units)
    if config.private:
        check_delta(delta, units, unit_name)
    if not 0 < config.batch_size < units:
        raise ClassifierError(f"--batch-size {config.batch_size} must be below the number of {unit_name}s "
                              f"({units}): sampling a fraction of them each step is what the budget relies on")
    mode = "hooks" if config.user_field else config.grad_sample_mode
    base_dir = resolve(config.base)
    model, tokenizer, base_config = load_artifact(base_dir)
    stored = _select_trainable(model, config.trainable_layers)
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    dataset = _unit_tensors(data, tokenizer, config.max_length)

    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / CHECKPOINT
    state = torch.load(checkpoint, weights_only=False) if checkpoint.is_file() else None
    if state is not None and (state["settings"] != _settings(config) or state["data_sha256"] != data.sha256):
        raise ClassifierError(f"{checkpoint} was written with other settings or data; use the same ones "
                              "(only --epochs may grow) or another --out")
    torch.manual_seed(config.seed)  # Poisson sampling and dropout
    noise = torch.Generator().manual_seed(config.seed + 1)
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=0.0)
    criterion = MaskedLoss()
    model.train()
    engine = None
    if config.private:
        engine = PrivacyEngine(accountant=config.accountant)
        common = dict(module=model, optimizer=optimizer, criterion=criterion, max_grad_norm=config.max_grad_norm,
                      data_loader=DataLoader(dataset, batch_size=config.batch_size), poisson_sampling=True,
                      grad_sample_mode=mode, noise_generator=noise)
        if state is None:
            wrapped = engine.make_private_with_epsilon(target_epsilon=config.epsilon, target_delta=delta,
                                                       epochs=config.epochs, **common)
        else:  # the checkpoint's noise: the budget is what it was planned against
            wrapped = engine.make_private(noise_multiplier=state["noise_multiplier"], **common)
        if mode == "ghost":
            wrapped_model, optimizer, criterion, loader = wrapped
        else:
            wrapped_model, optimizer, loader = wrapped
        sample_rate = loader.sample_rate
    else:
        wrapped_model = model
        loader = DataLoader(dataset, batch_size=config.physical_batch_size, shuffle=True)
        sample_rate = None
    steps_per_epoch = len(loader)
    total_steps = config.epochs * steps_per_epoch
    step = 0
    if state is not None:
        model.load_state_dict(state["trainable"], strict=False)
        (optimizer.original_optimizer if engine else optimizer).load_state_dict(state["optimizer"])
        if engine:
            engine.accountant.load_state_dict(state["accountant"])
        torch.set_rng_state(state["rng"])
        noise.set_state(state["noise_rng"])
        step = state["step"]
    noise_multiplier = optimizer.noise_multiplier if engine else 0.0
    budget_steps = total_steps
    if engine:
        budget_steps = steps_within_budget(noise_multiplier, sample_rate, delta, config.epsilon, total_steps,
                                           config.accountant)
    limit = min(budget_steps, config.max_steps or budget_steps)

    def spent() -> float:
        return float(engine.accountant.get_epsilon(delta)) if engine and step else 0.0

    def save() -> None:
        temporary = checkpoint.with_suffix(".tmp")
        torch.save({"trainable": {name: parameter.detach().clone() for name, parameter in model.named_parameters()
                                  if parameter.requires_grad},
                    "optimizer": (optimizer.original_optimizer if engine else optimizer).state_dict(),
                    "accountant": engine.accountant.state_dict() if engine else None, "step": step,
                    "noise_multiplier": noise_multiplier, "rng": torch.get_rng_state(), "noise_rng": noise.get_state(),
                    "settings": _settings(config), "data_sha256": data.sha256}, temporary)
        temporary.replace(checkpoint)  # a crash while saving leaves the previous checkpoint intact

    progress = tqdm(total=limit, initial=min(step, limit), desc="dp-train" if engine else "train (no dp)",
                    unit="step", disable=not show_progress)
    epsilon_every = max(1, limit // 20)  # the accountant takes ~0.2 s a call
    losses: list[float] = []
    rows_seen, loop_started = 0, time.monotonic()
    while step < limit:
        batches = BatchMemoryManager(data_loader=loader, max_physical_batch_size=config.physical_batch_size,
                                     optimizer=optimizer) if engine else None
        with batches or contextlib.nullcontext(loader) as physical_batches:
            for batch in physical_batches:
                input_ids, attention, labels, mask, weight, owner = _batch_rows(batch)
                loss = criterion(wrapped_model(input_ids, attention), labels, mask, weight)
                loss.backward()
                if config.user_field and engine:  # hooks mode: per-row gradients to merge
                    _merge_user_rows(trainable, owner, max(1, len(batch[0])))
                optimizer.step()
                optimizer.zero_grad()
                losses.append(float(loss.item()))
                rows_seen += len(input_ids)
                if engine and optimizer._is_last_step_skipped:
                    continue  # a part of a logical batch: Opacus accumulates it
                step += 1
                progress.update(1)
                postfix = {"loss": f"{sum(losses) / len(losses):.3f}"}
                losses.clear()
                if engine and (step % epsilon_every == 0 or step == limit):
                    postfix["eps"] = f"{spent():.3f}"
                progress.set_postfix(postfix)
                if step % config.checkpoint_every == 0 or step == limit:
                    save()
                if step >= limit:
                    break
    progress.close()
    report = _report(config, data, delta, engine, noise_multiplier, sample_rate, step, total_steps, budget_steps,
                     mode, spent(), time.monotonic() - started)
    report["examples_per_second"] = round(rows_seen / max(time.monotonic() - loop_started, 1e-9), 2)
    _write_artifact(model, stored, base_config, base_dir, out / "artifact", report)
    return report


def _report(config: DPConfig, data: PrivateData, delta: float, engine, noise_multiplier: float,
            sample_rate: float | None, step: int, total_steps: int, budget_steps: int, mode: str, epsilon: float,
            seconds: float) -> dict:
    stopped = "completed" if step >= total_steps else "budget exhausted" if step >= budget_steps else "paused"
    return {
        "private": engine is not None,
        "epsilon": round(epsilon, 4) if engine else None,
        "epsilon_target": config.epsilon if engine else None,
        "delta": delta if engine else None,
        "noise_multiplier": round(noise_multiplier, 5) if engine else None,
        "max_grad_norm": config.max_grad_norm if engine else None,
        "sample_rate": round(sample_rate, 6) if engine else None,
        "steps": step,
        "planned_steps": total_steps,
        "stopped": stopped,
        "accountant": config.accountant if engine else None,
        "grad_sample_mode": mode if engine else None,
        "privacy_unit": "user" if config.user_field else "example",
        "max_examples_per_user": config.max_per_user if config.user_field else None,
        "dataset_size": len(data.units),
        "examples": data.examples,
        "lines": data.lines,
        "duplicates_dropped": data.duplicates,
        "capped_examples": data.capped,
        "base": config.base,
        "trainable_layers": config.trainable_layers,
        "seconds": round(seconds, 1),
        "config": asdict(config),
    }


def _write_artifact(model, stored: list[str], base_config: ArtifactConfig, base_dir: Path, out: Path,
                    report: dict) -> None:
    """The artifact in the shipped format: every parameter the starting artifact stored (its
    calibration kept: no private data is used to fit one), the report in metrics and the card."""
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in stored)
    save_artifact(model, ArtifactConfig(
        added_characters=base_config.added_characters, mode="full", max_length=base_config.max_length,
        calibration=base_config.calibration, calibration_int8=base_config.calibration_int8,
        metrics={"dp_training": report}), out)
    read_config(out)  # what the gateway will read back
    write_dp_model_card(out, base_dir, report)
    (out.parent / "privacy_report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
