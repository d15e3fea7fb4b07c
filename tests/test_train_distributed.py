"""Training under torchrun (DDP): two CPU processes on gloo train what one process trains on the same
data and steps, resumed or not; a DP run keeps one accountant for the job; a rank that dies ends the job
with an error instead of a hang. Real processes throughout: the training loop in two processes started
with torchrun's environment, and `wardgate` itself under torchrun as docs/training.md says (the whole
commands on the real data are the slow variants)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.multiprocessing
from opacus.accountants import PRVAccountant
from safetensors.torch import load_file

from classifiers.artifact import load_artifact
from classifiers.data import make_example
from classifiers.distributed import TIMEOUT_ENV, Ranks, process_group
from classifiers.model import added_characters, base_model_dir, build_model, build_tokenizer
from classifiers.registry import BUILTIN_DIR
from classifiers.train import TrainConfig, collate, encode, fit, label_tensors
from privacy.dp.accounting import noise_for_budget
from privacy.dp.train import JobPoissonSampler
from tests.conftest import WARDGATE, audit_events
from tests.test_dp import FAST, SAFE, UNSAFE, report_of, write_data

TORCHRUN = str(Path(sys.executable).parent / "torchrun")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
# No dropout, so that a run does not depend on how its batches are split between processes.
FIT = TrainConfig(batch_size=16, dropout=0.0, max_length=48, checkpoint_every=1)  # 48 examples: 3 steps
TINY = ("--max-train-examples", "48", "--max-eval-examples", "48", "--batch-size", "16", "--dropout", "0")
TEXTS = ["How do I kill a Python process?", "请用 Python 实现快速排序", "教我做炸彈", "Write a poem about the sea."]


def assert_same_model(one: dict[str, torch.Tensor], two: dict[str, torch.Tensor], logits_one: torch.Tensor,
                      logits_two: torch.Tensor, start: dict[str, torch.Tensor]) -> None:
    """Two runs' weights and logits agree up to float rounding. The gradients are float32 sums taken in
    another order, and AdamW divides each by its own running size: a weight whose gradient is rounding
    noise in both runs (~0) can move by up to its learning rate a step either way. So: logits within
    1e-5, and fewer than 1 weight in 100,000 further apart than 1e-6 (none by more than 2 lr x 3 steps)."""
    assert one.keys() == two.keys()
    differences = torch.cat([(one[name] - two[name]).abs().flatten() for name in one])
    apart = int((differences > 1e-6).sum())
    outputs = (logits_one - logits_two).abs().max().item()
    print(f"1 vs 2 processes: max |logit difference| {outputs:.3g}; max |weight difference| "
          f"{differences.max().item():.3g}, {apart} of {differences.numel()} weights over 1e-6")
    assert outputs < 1e-5
    assert apart < differences.numel() / 100_000 and differences.max().item() < 6e-3
    # Training moved the weights far more than that: these are not two untrained models compared.
    assert (one["head.weight"] - start["head.weight"]).abs().max().item() > 1e-3


# ----------------------------------------------------------------------- the training loop, CI-fast


def tiny_job() -> tuple[torch.nn.Module, object, list[list[int]], torch.Tensor, torch.Tensor]:
    """The model as `classifier train` builds it and 48 English and Chinese examples, encoded; unsafe
    ones know only some labels, so the ranks' shares of a batch count different numbers of labels."""
    examples = []
    for index in range(48):
        if index % 8 == 0:
            examples.append(make_example(f"请用 Python 实现第{index}种排序", source="t", lang="zh", unsafe=False))
        elif index % 8 == 1:
            examples.append(make_example(f"教我做{index}个炸弹", source="t", lang="zh", unsafe=True, pos=["violence"]))
        elif index % 2:
            text, category = UNSAFE[index % 3]
            examples.append(make_example(text.format(index), source="t", lang="en", unsafe=True, pos=[category]))
        else:
            examples.append(make_example(SAFE[index % 4].format(index) * (1 + index % 3), source="t", lang="en",
                                         unsafe=False))
    base = base_model_dir()
    added = added_characters([e.text for e in examples if e.lang == "zh"], set(build_tokenizer(base, []).get_vocab()))
    tokenizer = build_tokenizer(base, added)
    torch.manual_seed(FIT.seed)
    model = build_model(base, len(added), FIT.seed)
    labels, mask = label_tensors(examples)
    return model, tokenizer, encode(tokenizer, [e.text for e in examples], FIT.max_length), labels, mask


def model_logits(model: torch.nn.Module, tokenizer) -> torch.Tensor:
    model.eval()
    ids = encode(tokenizer, TEXTS, FIT.max_length)
    with torch.inference_mode():
        return model(*collate(ids, list(range(len(ids)))))


def _rank_of_a_tiny_job(rank: int, world: int, port: int, directory: str) -> None:
    """One rank, in the environment torchrun gives it: trains one step, stops (as --max-minutes does),
    then a fresh model resumes from the checkpoint rank 0 wrote and trains to the end."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1", **{TIMEOUT_ENV: "60"})
    torch.set_num_threads(1)
    checkpoint = Path(directory) / "checkpoint.pt"
    with process_group() as ranks:
        model, _, ids, labels, mask = tiny_job()
        first = fit(model, ids, labels, mask, replace(FIT, max_minutes=1e-6), checkpoint, ranks, time.monotonic())
        model, tokenizer, ids, labels, mask = tiny_job()
        second = fit(model, ids, labels, mask, FIT, checkpoint, ranks, time.monotonic())
        if ranks.main:
            torch.save({"steps": [first, second], "model": model.state_dict(),
                        "logits": model_logits(model, tokenizer)}, Path(directory) / "two.pt")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_processes_run_the_training_loop_of_one_and_resume_under_ddp(tmp_path):
    model, tokenizer, ids, labels, mask = tiny_job()
    start = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    assert fit(model, ids, labels, mask, FIT, tmp_path / "one.pt", Ranks(), time.monotonic()) == (3, 3)
    torch.multiprocessing.spawn(_rank_of_a_tiny_job, args=(2, free_port(), str(tmp_path)), nprocs=2)
    two = torch.load(tmp_path / "two.pt")
    assert two["steps"] == [(1, 3), (3, 3)]
    assert_same_model(model.state_dict(), two["model"], model_logits(model, tokenizer), two["logits"], start)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert saved["step"] == 3 and len(saved["rng_by_rank"]) == 2


# ------------------------------------------------------------------------- the DP job's accountant


def torchrun_command(*args: object, processes: int = 2) -> list[str]:
    """The documented command: torchrun starting `wardgate` itself in each process."""
    return [TORCHRUN, "--standalone", "--nproc-per-node", str(processes), "--no-python", WARDGATE, *map(str, args)]


def torchrun(*args: object, processes: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(torchrun_command(*args, processes=processes), capture_output=True, text=True, env=ENV,
                            timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def wardgate(*args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run([WARDGATE, *map(str, args)], capture_output=True, text=True, env=ENV, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")  # as dp_train itself does
def test_a_dp_run_under_ddp_has_one_accountant_for_the_job(tmp_path):
    data, out, state = write_data(tmp_path / "d.jsonl"), tmp_path / "out", tmp_path / "state"
    result = torchrun("dp-train", "--data", data, "--out", out, "--epsilon", "1", *FAST, "--state-dir", state)
    assert result.stdout.count("epsilon ") == 1  # rank 0 alone reports
    report = report_of(out)
    assert (report["processes"], report["backend"], report["steps"], report["stopped"]) == (2, "gloo", 5, "completed")
    # The noise a single process plans for this budget at the job's sample rate (40 examples, 8 a step)...
    checkpoint = torch.load(out / "dp-checkpoint.pt", weights_only=False)
    assert report["sample_rate"] == 0.2
    assert checkpoint["noise_multiplier"] == noise_for_budget(1.0, 1e-5, 0.2, epochs=1)
    # ...and one accountant, holding every step of the job (not each rank's share of them), whose epsilon
    # is a single process's accountant's for the same sample rate, steps and noise.
    assert checkpoint["accountant"]["history"] == [(checkpoint["noise_multiplier"], 0.2, 5)]
    single = PRVAccountant()
    single.history = [(checkpoint["noise_multiplier"], 0.2, 5)]
    assert report["epsilon"] == round(single.get_epsilon(1e-5), 4) and report["epsilon"] <= 1.0
    assert len(checkpoint["rng_by_rank"]) == 2
    # One audit event and one artifact for the job, trained.
    events = [body for body in audit_events(state / "audit.sqlite3") if body["event"] == "dp_training_completed"]
    assert len(events) == 1 and events[0]["epsilon"] == report["epsilon"] and events[0]["processes"] == 2
    trained, _, _ = load_artifact(out / "artifact")
    base, _, _ = load_artifact(BUILTIN_DIR)
    assert not torch.equal(trained.head.weight, base.head.weight)


def test_the_job_sampler_is_poisson_over_the_whole_dataset_split_into_disjoint_shards():
    total, rate, steps = 101, 0.1, 400

    def draws(rank: int, world: int) -> list[list[int]]:
        return list(JobPoissonSampler(total_size=total, sample_rate=rate, steps=steps, rank=rank, world=world,
                                      generator=torch.Generator().manual_seed(7)))

    alone = draws(0, 1)
    shards = [draws(rank, 3) for rank in range(3)]
    assert all(len(batches) == steps for batches in shards)  # empty shares are steps too: no rank falls behind
    assert any(not batch for batches in shards for batch in batches)
    for step in range(steps):
        parts = [set(shards[rank][step]) for rank in range(3)]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        assert set().union(*parts) == set(alone[step])  # the job's batch does not depend on the world size
        assert all(index % 3 == rank for rank in range(3) for index in parts[rank])
    included = sum(len(batch) for batch in alone) / (total * steps)
    assert abs(included - rate) < 0.01


# --------------------------------------------------------------------------------- a rank that dies


def _worker_pid(launcher: int, rank: int) -> int | None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if parent == launcher and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


def test_a_rank_that_dies_ends_the_job_with_an_error_not_a_hang(tmp_path):
    data, out, log = write_data(tmp_path / "d.jsonl"), tmp_path / "out", tmp_path / "torchrun.log"
    command = torchrun_command("dp-train", "--data", data, "--out", out, *FAST, "--epochs", "100",
                               "--checkpoint-every", "1")
    with log.open("w") as sink:
        launcher = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=ENV)
    try:
        deadline = time.monotonic() + 100
        while not (out / "dp-checkpoint.pt").exists():  # the job is training
            assert launcher.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        worker = _worker_pid(launcher.pid, rank=1)
        assert worker is not None
        os.kill(worker, signal.SIGKILL)
        killed = time.monotonic()
        launcher.wait(timeout=60)
        print(f"the job ended {time.monotonic() - killed:.1f} s after rank 1 was killed")
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    output = log.read_text()
    assert launcher.returncode != 0
    # torchrun names the rank that failed and how.
    assert re.search(r"rank\s*: 1 \(local_rank: 1\)\n\s*exitcode\s*: -9 .*SIGKILL", output), output[-3000:]


# ------------------------------------------------------ the whole commands on the real data (slow)


def artifact_logits(artifact: Path) -> torch.Tensor:
    model, tokenizer, config = load_artifact(artifact)
    model.eval()
    ids = encode(tokenizer, TEXTS, config.max_length)
    with torch.inference_mode():
        return model(*collate(ids, list(range(len(ids)))))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_classifier_train_under_torchrun_trains_what_one_process_trains(tmp_path):
    """~4 minutes on 2 cores: each run loads the whole public data and writes an int8-calibrated artifact."""
    one, two = tmp_path / "one", tmp_path / "two"
    wardgate("classifier", "train", "--out", one, *TINY, timeout=600)
    # The two-process run is interrupted after its first step and resumed, under torchrun both times.
    torchrun("classifier", "train", "--out", two, *TINY, "--max-minutes", "1e-6", timeout=600)
    assert json.loads((two / "validation.json").read_text())["steps"] == 1
    resumed = torchrun("classifier", "train", "--out", two, *TINY, timeout=600)
    assert resumed.stdout.count("artifact: ") == 1  # rank 0 alone reports
    single, double = (json.loads((run / "validation.json").read_text()) for run in (one, two))
    assert (single["steps"], single["processes"], single["backend"]) == (3, 1, None)
    assert (double["steps"], double["processes"], double["backend"]) == (3, 2, "gloo")
    added = json.loads((one / "artifact" / "config.json").read_text())["added_characters"]
    start = {"head.weight": build_model(base_model_dir(), len(added), seed=0).head.weight.detach()}
    assert_same_model(load_file(str(one / "artifact" / "delta.safetensors")),
                      load_file(str(two / "artifact" / "delta.safetensors")),
                      artifact_logits(one / "artifact"), artifact_logits(two / "artifact"), start)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_dp_train_under_torchrun_accounts_as_one_process_and_stops_at_the_budget(tmp_path):
    """~3 minutes: a single-process run beside the two-process one, then a paused, resumed and
    over-asked two-process run."""
    data = write_data(tmp_path / "d.jsonl")
    wardgate("dp-train", "--data", data, "--out", tmp_path / "one", "--epsilon", "1", *FAST)
    torchrun("dp-train", "--data", data, "--out", tmp_path / "two", "--epsilon", "1", *FAST)
    single, double = report_of(tmp_path / "one"), report_of(tmp_path / "two")
    for key in ("sample_rate", "noise_multiplier", "steps", "planned_steps", "epsilon", "delta", "stopped"):
        assert double[key] == single[key], key

    data, out = write_data(tmp_path / "u.jsonl", count=48, users=16), tmp_path / "out"
    common = ("dp-train", "--data", data, "--out", out, "--user-field", "user", "--epsilon", "2", *FAST[2:],
              "--checkpoint-every", "1")
    torchrun(*common, "--epochs", "2", "--max-steps", "2")
    paused = report_of(out)
    assert (paused["steps"], paused["stopped"], paused["processes"]) == (2, "paused", 2)
    torchrun(*common, "--epochs", "2")
    done = report_of(out)
    assert done["steps"] == done["planned_steps"] == 4 and done["stopped"] == "completed"
    again = PRVAccountant()
    again.history = [(done["noise_multiplier"], done["sample_rate"], 4)]
    assert done["epsilon"] == pytest.approx(again.get_epsilon(done["delta"]), abs=0.01)
    # More epochs on the same noise: rank 0's accountant says where the budget ends, for every rank.
    more = torchrun(*common, "--epochs", "6")
    assert "budget exhausted" in more.stdout
    exhausted = report_of(out)
    assert exhausted["stopped"] == "budget exhausted" and exhausted["noise_multiplier"] == done["noise_multiplier"]
    assert exhausted["steps"] < exhausted["planned_steps"] == 12 and exhausted["epsilon"] <= 2.0


@pytest.mark.gpu
@pytest.mark.timeout(900)
def test_on_gpus_the_job_runs_on_nccl(tmp_path):
    """One process per GPU, NCCL between them: the same commands as on CPU."""
    processes = torch.cuda.device_count()
    data = write_data(tmp_path / "d.jsonl")
    torchrun("dp-train", "--data", data, "--out", tmp_path / "dp", "--epsilon", "1", *FAST, processes=processes)
    report = report_of(tmp_path / "dp")
    assert (report["processes"], report["backend"], report["steps"]) == (processes, "nccl", 5)
    torchrun("classifier", "train", "--out", tmp_path / "classifier", *TINY, processes=processes, timeout=600)
    validation = json.loads((tmp_path / "classifier" / "validation.json").read_text())
    assert (validation["processes"], validation["backend"], validation["steps"]) == (processes, "nccl", 3)
