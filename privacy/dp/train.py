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

Under torchrun (classifiers/distributed.py) this is Opacus's distributed DP-SGD: the model is wrapped
in DifferentiallyPrivateDistributedDataParallel, each rank clips its own units' gradients, the clipped
sums are added across ranks and rank 0 alone adds the noise, so a step's noise is a single process's.
Sampling stays Poisson over the whole dataset at the job's sample rate: every rank draws the same
inclusion mask from one seeded generator (JobPoissonSampler) and keeps the sampled units of its own
shard, so the ranks' batches are disjoint and together the job's batch. The job has one accountant:
rank 0 plans the noise for the budget, decides how many steps the budget allows, holds the only
accountant history, checkpoints it and reports the job's epsilon; the other ranks only compute.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from opacus import PrivacyEngine
from opacus.distributed import DifferentiallyPrivateDistributedDataParallel
from opacus.utils.batch_memory_manager import BatchMemoryManager
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
from tqdm import tqdm

from classifiers.artifact import ArtifactConfig, load_artifact, read_config, save_artifact
from classifiers.distributed import Ranks, process_group
from classifiers.labels import LABELS, ClassifierError
from classifiers.registry import resolve
from classifiers.train import collate, encode, label_tensors
from privacy.dp.accounting import noise_for_budget, steps_within_budget
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
        parameter.grad_sample = torch.zeros(units, *rows.shape[1:], dtype=rows.dtype, device=rows.device).index_add_(
            0, owner.to(rows.device), rows)


class JobPoissonSampler:
    """Poisson sampling for a job of `world` ranks: each step, every unit of the dataset is in the batch
    with probability `sample_rate`, independently, as for one process (the accountant's assumption).
    All ranks draw the same mask from generators seeded alike; a rank yields the sampled units of its
    shard (unit index modulo world), so the ranks' batches are disjoint and together the job's batch.
    An empty share is yielded too (Opacus's own distributed sampler skips it), so that every rank takes
    every step and meets the others in each step's gradient sum."""

    def __init__(self, *, total_size: int, sample_rate: float, steps: int, rank: int, world: int,
                 generator: torch.Generator) -> None:
        self.total_size, self.sample_rate, self.steps = total_size, sample_rate, steps
        self.rank, self.world, self.generator = rank, world, generator

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for _ in range(self.steps):
            sampled = (torch.rand(self.total_size, generator=self.generator) < self.sample_rate).nonzero().flatten()
            yield sampled[sampled % self.world == self.rank].tolist()


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


def dp_train(data_path: Path, out: Path, config: DPConfig, show_progress: bool = True) -> dict | None:
    """Fine-tune into `out` (resuming from its checkpoint if there is one); the report, also written
    into the artifact's config.json metrics and model card (on rank 0 under torchrun; None on the
    other ranks)."""
    with warnings.catch_warnings():
        # Known and stated elsewhere: the noise comes from torch's PRNG (docs/dp.md), and the frozen
        # layers below the trained ones make the backward hooks fire on outputs only.
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        with process_group() as ranks:
            return _dp_train(data_path, out, config, show_progress, ranks)


def _dp_train(data_path: Path, out: Path, config: DPConfig, show_progress: bool, ranks: Ranks) -> dict | None:
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

    if ranks.main:
        out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / CHECKPOINT
    # Rank 0 reads it and sends it to the others: only rank 0 needs to see the output directory.
    state = ranks.broadcast(torch.load(checkpoint, weights_only=False, map_location="cpu")
                            if ranks.main and checkpoint.is_file() else None)
    if state is not None and (state["settings"] != _settings(config) or state["data_sha256"] != data.sha256):
        raise ClassifierError(f"{checkpoint} was written with other settings or data; use the same ones "
                              "(only --epochs may grow) or another --out")
    torch.manual_seed(config.seed)  # Poisson sampling (one process) and dropout
    ranks.seed_dropout(config.seed)
    # Under torchrun only rank 0's noise is added (Opacus's distributed optimizer): it is a single process's.
    noise = torch.Generator(device=ranks.device).manual_seed(config.seed + 1)
    sampling = torch.Generator().manual_seed(config.seed)  # the job's Poisson sampling, alike on every rank
    model.to(ranks.device)  # before Opacus wraps it
    module = DifferentiallyPrivateDistributedDataParallel(model) if ranks.distributed and config.private else model
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=0.0)
    criterion = MaskedLoss()
    model.train()
    engine = None
    if config.private:
        engine = PrivacyEngine(accountant=config.accountant)
        planned = DataLoader(dataset, batch_size=config.batch_size)
        sample_rate = 1 / len(planned)  # what Opacus samples at and accounts with
        # The checkpoint's noise when resuming: the budget is what it was planned against.
        noise_multiplier = state["noise_multiplier"] if state is not None else ranks.broadcast(
            noise_for_budget(config.epsilon, delta, sample_rate, config.epochs, config.accountant)
            if ranks.main else None)
        wrapped = engine.make_private(module=module, optimizer=optimizer, criterion=criterion,
                                      max_grad_norm=config.max_grad_norm, data_loader=planned, poisson_sampling=True,
                                      grad_sample_mode=mode, noise_generator=noise, noise_multiplier=noise_multiplier)
        if mode == "ghost":
            wrapped_model, optimizer, criterion, loader = wrapped
        else:
            wrapped_model, optimizer, loader = wrapped
        if ranks.distributed:
            loader = DataLoader(dataset, collate_fn=loader.collate_fn, batch_sampler=JobPoissonSampler(
                total_size=len(dataset), sample_rate=sample_rate, steps=len(loader), rank=ranks.rank,
                world=ranks.world, generator=sampling))
            if not ranks.main:
                optimizer.attach_step_hook(None)  # the job's one accountant is rank 0's
    elif ranks.distributed:  # the baseline: plain DDP, each rank a shard of every epoch
        wrapped_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[ranks.device] if ranks.device.type == "cuda" else None)
        shards = DistributedSampler(dataset, num_replicas=ranks.world, rank=ranks.rank, seed=config.seed)
        loader = DataLoader(dataset, batch_size=math.ceil(config.physical_batch_size / ranks.world), sampler=shards)
        sample_rate, noise_multiplier = None, 0.0
    else:
        wrapped_model = model
        loader = DataLoader(dataset, batch_size=config.physical_batch_size, shuffle=True)
        sample_rate, noise_multiplier = None, 0.0
    steps_per_epoch = len(loader)
    total_steps = config.epochs * steps_per_epoch
    step = 0
    if state is not None:
        model.load_state_dict(state["trainable"], strict=False)
        (optimizer.original_optimizer if engine else optimizer).load_state_dict(state["optimizer"])
        if engine and ranks.main:
            engine.accountant.load_state_dict(state["accountant"])
        ranks.restore_rng(state)
        if ranks.main:  # the only rank that draws noise
            noise.set_state(state["noise_rng"])
        if state.get("sampling_rng") is not None:
            sampling.set_state(state["sampling_rng"])
        step = state["step"]
    budget_steps = total_steps
    if engine:  # rank 0's decision, for every rank: all stop at the same step
        budget_steps = ranks.broadcast(steps_within_budget(noise_multiplier, sample_rate, delta, config.epsilon,
                                                           total_steps, config.accountant) if ranks.main else None)
    limit = min(budget_steps, config.max_steps or budget_steps)

    def spent() -> float:
        return float(engine.accountant.get_epsilon(delta)) if engine and step else 0.0

    def save() -> None:
        rng_by_rank = ranks.gather(ranks.rng_state())  # a collective: every rank comes here at the same step
        if not ranks.main:
            return
        temporary = checkpoint.with_suffix(".tmp")
        torch.save({"trainable": {name: parameter.detach().cpu().clone() for name, parameter
                                  in model.named_parameters() if parameter.requires_grad},
                    "optimizer": (optimizer.original_optimizer if engine else optimizer).state_dict(),
                    "accountant": engine.accountant.state_dict() if engine else None, "step": step,
                    "noise_multiplier": noise_multiplier, "rng": torch.get_rng_state(),
                    "rng_by_rank": rng_by_rank, "noise_rng": noise.get_state(),
                    "sampling_rng": sampling.get_state() if ranks.distributed else None,
                    "settings": _settings(config), "data_sha256": data.sha256}, temporary)
        temporary.replace(checkpoint)  # a crash while saving leaves the previous checkpoint intact

    progress = tqdm(total=limit, initial=min(step, limit), desc="dp-train" if engine else "train (no dp)",
                    unit="step", disable=not show_progress or not ranks.main)
    epsilon_every = max(1, limit // 20)  # the accountant takes ~0.2 s a call
    losses: list[float] = []
    rows_seen, loop_started = 0, time.monotonic()
    while step < limit:
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(step // steps_per_epoch)
        batches = BatchMemoryManager(data_loader=loader, max_physical_batch_size=config.physical_batch_size,
                                     optimizer=optimizer) if engine else None
        with batches or contextlib.nullcontext(loader) as physical_batches:
            for batch in physical_batches:
                input_ids, attention, labels, mask, weight, owner = (
                    tensor.to(ranks.device) for tensor in _batch_rows(batch))
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
                loss_sum, loss_count = ranks.sum(sum(losses), len(losses))  # the job's mean loss of the step
                postfix = {"loss": f"{loss_sum / loss_count:.3f}"}
                losses.clear()
                if ranks.main and engine and (step % epsilon_every == 0 or step == limit):
                    postfix["eps"] = f"{spent():.3f}"
                progress.set_postfix(postfix)
                if step % config.checkpoint_every == 0 or step == limit:
                    save()
                if step >= limit:
                    break
    progress.close()
    [rows_seen] = ranks.sum(rows_seen)
    seconds = time.monotonic() - loop_started
    ranks.barrier()  # every rank's last step is done before rank 0 goes on alone
    if not ranks.main:
        return None
    report = _report(config, data, delta, engine, noise_multiplier, sample_rate, step, total_steps,
                     budget_steps, mode, spent(), time.monotonic() - started)
    report["examples_per_second"] = round(rows_seen / max(seconds, 1e-9), 2)
    report["processes"], report["backend"] = ranks.world, ranks.backend
    model.to("cpu")
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
        added_characters=base_config.added_characters, kept_pieces=base_config.kept_pieces, base=base_config.base,
        mode="full", max_length=base_config.max_length,
        calibration=base_config.calibration, calibration_int8=base_config.calibration_int8,
        metrics={"dp_training": report}), out)
    read_config(out)  # what the gateway will read back
    write_dp_model_card(out, base_dir, report)
    (out.parent / "privacy_report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
