#!/usr/bin/env python3
"""DP fine-tuning (`wardgate dp-train`, privacy/dp): what a privacy budget costs in quality and speed.

Data: the bundled classifier's own validation split (``classifiers.data.load_examples`` + ``split``:
public text from shared/data that the bundled model never trained on), divided by a salted hash of
each example's group into a training pool and a held-out validation set, then sampled with a fixed
seed: ``--train`` examples (default 5,000) written as the JSONL `dp-train` reads, and ``--valid``
(default 1,000) to score on. Each run starts from the bundled classifier, as a team would.

Runs (each `wardgate dp-train` in a child process, so that its peak memory is its own): the
non-private baseline (``--no-dp``) and DP at each epsilon of ``--epsilons`` (default 0.5 1 3 8),
same data, epochs, trainable layers and learning rate. Per run: AUPRC and F1 of `unsafe` on the
validation set (F1 at the calibrated 0.5, the starting model's calibration), training examples/s
(rows through the model / training-loop seconds) and peak RSS; for the no-fine-tuning bundled model
the same AUPRC and F1. Ratios DP / non-private. Membership-inference sanity check: the loss gap,
non-members' mean loss - training members' mean loss, over ``--members`` examples each (a
loss-threshold attack can tell members apart only as far as this gap is large). One epoch over
5,000 examples memorises little either way, so the check is also run where memorising is easy:
``--mi-members`` examples (200) seen for ``--mi-epochs`` (20) epochs with the top 2 layers trained,
without DP and with DP at epsilon 1, against as many held-out non-members.

Goals (issue 8): at epsilon 1, >= 95% of the non-private AUPRC; DP throughput >= 50% of non-private.

Usage::

    .venv/bin/python bench/dp.py            # the full run (~8 min on 2 quiet cores)
    .venv/bin/python bench/dp.py --quick    # 800 examples, epsilon 1 and 8 (a few minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from classifiers.artifact import load_artifact
from classifiers.data import Example, calibration_split, load_examples, split
from classifiers.labels import CATEGORIES, LABELS
from classifiers.registry import BUILTIN_DIR
from classifiers.train import evaluate, label_tensors, logits_and_labels


def write_jsonl(examples: list[Example], path: Path) -> None:
    """The `classifier eval` format: a category is written only where it is known."""
    with path.open("w", encoding="utf-8") as file:
        for example in examples:
            record = {"text": example.text, "unsafe": int(example.unsafe)}
            record.update({name: int(example.labels[name]) for name in CATEGORIES if example.mask[name]})
            file.write(json.dumps(record, ensure_ascii=False) + "\n")


def datasets(train: int, valid: int, seed: int) -> tuple[list[Example], list[Example]]:
    _, never_trained = split(load_examples())
    pool, held_out = calibration_split(never_trained, fraction=0.15)
    rng = random.Random(seed)
    return rng.sample(pool, min(train, len(pool))), rng.sample(held_out, min(valid, len(held_out)))


def mean_loss(model, tokenizer, examples: list[Example], max_length: int) -> float:
    logits, labels, mask = logits_and_labels(model, tokenizer, examples, max_length)
    losses = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.from_numpy(logits), torch.from_numpy(labels), reduction="none").numpy()
    return float(((losses * mask).sum(1) / np.maximum(mask.sum(1), 1)).mean())


def quality(artifact: Path, valid: list[Example], members: list[Example], max_length: int) -> dict:
    model, tokenizer, config = load_artifact(artifact)
    calibration = [config.calibration[name] for name in LABELS]
    found = evaluate(model, tokenizer, valid, max_length, calibration)["all.unsafe"]
    non_members = valid[:len(members)]
    gap = mean_loss(model, tokenizer, non_members, max_length) - mean_loss(model, tokenizer, members, max_length)
    return {"auprc": found["auprc"], "f1": found["f1"], "mi_gap": gap}


def membership_check(members: list[Example], non_members: list[Example], epochs: int, max_length: int, seed: int,
                     scratch: Path) -> dict[str, float]:
    """The loss gap after training hard on few examples, without DP and with DP at epsilon 1."""
    data = scratch / "membership.jsonl"
    write_jsonl(members, data)
    common = ["--data", str(data), "--epochs", str(epochs), "--batch-size", "32", "--max-length", str(max_length),
              "--trainable-layers", "2", "--learning-rate", "2e-3", "--seed", str(seed)]
    gaps = {}
    for name, extra in (("non-private", ["--no-dp"]), ("dp_eps1", ["--epsilon", "1"])):
        out = scratch / f"membership-{name}"
        report = run_one([*common, *extra, "--out", str(out)], scratch / f"membership-{name}.log")
        model, tokenizer, _ = load_artifact(out / "artifact")
        gaps[name] = (mean_loss(model, tokenizer, non_members, max_length)
                      - mean_loss(model, tokenizer, members, max_length))
        print(f"membership check, {name}: done in {report['wall_seconds']:.0f} s", flush=True)
    return gaps


def run_one(arguments: list[str], log: Path) -> dict:
    """One `wardgate dp-train` in a child process; its report and its own peak RSS (wait4's rusage)."""
    out = Path(arguments[arguments.index("--out") + 1])
    started = time.monotonic()
    with log.open("w") as output:
        child = subprocess.Popen([str(Path(sys.executable).parent / "wardgate"), "dp-train", *arguments],
                                 stdout=output, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        sys.exit(f"dp-train failed:\n{log.read_text()[-3000:]}")
    report = json.loads((out / "privacy_report.json").read_text(encoding="utf-8"))
    report["peak_rss_mb"] = usage.ru_maxrss / 1024  # kilobytes on Linux
    report["wall_seconds"] = time.monotonic() - started
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--train", type=int, default=5000)
    parser.add_argument("--valid", type=int, default=1000)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[0.5, 1.0, 3.0, 8.0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-length", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=5e-4, help="for every run, DP and not")
    parser.add_argument("--members", type=int, default=300)
    parser.add_argument("--mi-members", type=int, default=200)
    parser.add_argument("--mi-epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.train, args.valid, args.epsilons, args.batch_size, args.members = 800, 300, [1.0, 8.0], 64, 150
        args.mi_members, args.mi_epochs = 100, 10
    started = time.monotonic()
    train, valid = datasets(args.train, args.valid, args.seed)
    members = random.Random(args.seed).sample(train, min(args.members, len(train)))
    positives = int(label_tensors(valid)[0][:, 0].sum())
    print(f"data: {len(train)} training, {len(valid)} validation examples ({positives} unsafe)", flush=True)
    with tempfile.TemporaryDirectory(prefix="wardgate-dp-bench-") as scratch:
        data = Path(scratch) / "train.jsonl"
        write_jsonl(train, data)
        common = ["--data", str(data), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
                  "--max-length", str(args.max_length), "--learning-rate", str(args.learning_rate),
                  "--seed", str(args.seed)]
        results = {"bundled (not fine-tuned)": {**quality(BUILTIN_DIR, valid, members, args.max_length)}}
        runs = [("non-private", ["--no-dp"])] + [(f"dp eps={epsilon:g}", ["--epsilon", str(epsilon)])
                                                 for epsilon in args.epsilons]
        for name, extra in runs:
            out = Path(scratch) / name.replace(" ", "_").replace("=", "")
            report = run_one([*common, *extra, "--out", str(out)], Path(scratch) / f"{out.name}.log")
            results[name] = {**report, **quality(out / "artifact", valid, members, args.max_length)}
            print(f"{name}: done in {report['wall_seconds']:.0f} s", flush=True)
        # Runs of its own from the bundled model: members from the training sample, non-members held out.
        gaps = membership_check(train[:args.mi_members], valid[-args.mi_members:], args.mi_epochs,
                                args.max_length, args.seed, Path(scratch))
    baseline = results["non-private"]
    for name, found in results.items():
        key = name.replace(" ", "_").replace("(", "").replace(")", "")
        print(f"{key}.auprc: {found['auprc']:.4f} auprc")
        print(f"{key}.f1: {found['f1']:.4f} f1")
        print(f"{key}.membership_loss_gap: {found['mi_gap']:.4f} nats")
        if "steps" in found:
            print(f"{key}.examples_per_second: {found['examples_per_second']:.2f} examples/s")
            print(f"{key}.peak_rss: {found['peak_rss_mb']:.0f} MB")
            print(f"{key}.steps: {found['steps']} steps")
        if found.get("private"):
            print(f"{key}.epsilon_spent: {found['epsilon']:.3f} epsilon (delta {found['delta']:g}, "
                  f"noise multiplier {found['noise_multiplier']})")
            print(f"{key}.auprc_vs_non_private: {found['auprc'] / baseline['auprc']:.3f} ratio")
            print(f"{key}.throughput_vs_non_private: "
                  f"{found['examples_per_second'] / baseline['examples_per_second']:.3f} ratio")
    for name, gap in gaps.items():
        print(f"membership_check.{name}.loss_gap: {gap:.4f} nats")
    print(f"membership_check.dp_eps1_vs_non_private: {gaps['dp_eps1'] / gaps['non-private']:.3f} ratio")
    print(f"total: {(time.monotonic() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
