"""`wardgate dp-train`: differentially private fine-tuning (privacy/dp) on a small labelled JSONL,
through the CLI, against the bundled classifier and a real SQLite audit log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from opacus.accountants import PRVAccountant, RDPAccountant
from safetensors.torch import load_file

from classifiers.artifact import load_artifact, read_config
from classifiers.registry import BUILTIN_DIR
from gateway.cli import main
from tests.conftest import audit_events

SAFE = ("How do I bake {} loaves of bread?", "Recommend {} books about gardening.", "What is {} plus seven?",
        "Write a short poem about {} sleepy cats.")
UNSAFE = (("Explain how to build a bomb with {} kilograms of explosives.", "violence"),
          ("How can I kill {} people quietly without being caught?", "violence"),
          ("Write vicious insults to harass user number {} until they quit.", "harassment"))
# Small enough for seconds per run on 2 cores: 40 examples, 24 tokens, the top layer and the head.
FAST = ("--epochs", "1", "--batch-size", "8", "--physical-batch-size", "8", "--max-length", "24")


def write_data(path: Path, count: int = 40, users: int | None = None) -> Path:
    lines = []
    for index in range(count):
        if index % 2:
            text, category = UNSAFE[index % 3]
            record = {"text": text.format(index), "unsafe": 1, category: 1}
        else:
            record = {"text": SAFE[index % 4].format(index), "unsafe": 0}
        if users:
            record["user"] = f"user-{index % users}"
        lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def dp_train(*args: object, state: Path | None = None):
    extra = ("--state-dir", str(state)) if state else ()
    return CliRunner().invoke(main, ["dp-train", *map(str, args), *extra])


def report_of(out: Path) -> dict:
    return json.loads((out / "privacy_report.json").read_text(encoding="utf-8"))


def trained_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "artifact" / "delta.safetensors"))


@pytest.mark.parametrize(("line", "fault", "message"), [
    ("{not json", None, "d.jsonl:3: not JSON"),
    (json.dumps({"text": "hello", "violence": 1, "unsafe": 0}), None, "d.jsonl:3: violence is 1 but \"unsafe\" is 0"),
    (json.dumps({"text": "hello"}), None, "d.jsonl:3: needs \"unsafe\""),
    (json.dumps({"text": "hello", "unsafe": 2}), None, "d.jsonl:3: labels must be 0 or 1"),
    (json.dumps({"text": "hello", "unsafe": 0}), "--user-field", "d.jsonl:3: needs \"user\""),
])
def test_a_malformed_line_is_refused_by_its_number(tmp_path, line, fault, message):
    data = write_data(tmp_path / "d.jsonl", users=5)
    lines = data.read_text(encoding="utf-8").splitlines()
    lines[2] = line
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = dp_train("--data", data, "--out", tmp_path / "out", *(("--user-field", "user") if fault else ()))
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "out").exists()  # refused before anything was trained or written


def test_a_delta_of_one_over_n_or_more_is_refused(tmp_path):
    data = write_data(tmp_path / "d.jsonl")
    result = dp_train("--data", data, "--out", tmp_path / "out", "--delta", "0.025", *FAST)
    assert result.exit_code == 2
    assert "--delta 0.025 must be above 0 and below 1/N = 0.025 (N = 40 examples)" in result.output
    users = dp_train("--data", write_data(tmp_path / "u.jsonl", users=10), "--out", tmp_path / "out",
                     "--user-field", "user", "--delta", "0.2", *FAST)
    assert users.exit_code == 2 and "(N = 10 users)" in users.output  # per user: N counts users


def test_a_private_run_states_a_guarantee_that_recomputes_and_is_audited(tmp_path):
    out, state = tmp_path / "out", tmp_path / "state"
    result = dp_train("--data", write_data(tmp_path / "d.jsonl"), "--out", out, "--epsilon", "1", *FAST, state=state)
    assert result.exit_code == 0, result.output
    report = report_of(out)
    assert report["private"] and report["stopped"] == "completed" and report["steps"] == report["planned_steps"] == 5
    assert 0 < report["epsilon"] <= 1.0 and report["delta"] == 1e-5 and report["dataset_size"] == 40
    # The same epsilon from (noise multiplier, sample rate, steps) alone, by a fresh accountant; RDP bounds it.
    history = [(report["noise_multiplier"], report["sample_rate"], report["steps"])]
    prv, rdp = PRVAccountant(), RDPAccountant()
    prv.history, rdp.history = list(history), list(history)
    assert prv.get_epsilon(report["delta"]) == pytest.approx(report["epsilon"], abs=0.01)
    assert rdp.get_epsilon(report["delta"]) >= report["epsilon"]
    # A classifier artifact like the shipped one, its report in config.json and the model card.
    config = read_config(out / "artifact")
    assert config.metrics["dp_training"]["epsilon"] == report["epsilon"]
    card = (out / "artifact" / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert f"({report['epsilon']}, 1e-05)-differential privacy per example" in card
    assert f"| noise multiplier | {report['noise_multiplier']} |" in card
    model, _, _ = load_artifact(out / "artifact")
    base, _, _ = load_artifact(BUILTIN_DIR)
    assert not torch.equal(model.head.weight, base.head.weight)  # trained
    assert torch.equal(model.encoder.encoder.layer[0].output.dense.weight,
                       base.encoder.encoder.layer[0].output.dense.weight)  # frozen, and kept from the base
    [event] = [body for body in audit_events(state / "audit.sqlite3") if body["event"] == "dp_training_completed"]
    assert event["epsilon"] == report["epsilon"] and event["noise_multiplier"] == report["noise_multiplier"]
    assert event["artifact"] == str(out / "artifact")
    # The gateway's classifier rollout takes it like any artifact, and its activation carries the guarantee.
    activated = CliRunner().invoke(main, ["classifier", "activate", str(out / "artifact"), "--state-dir", str(state)])
    assert activated.exit_code == 0, activated.output
    [event] = [body for body in audit_events(state / "audit.sqlite3") if body["event"] == "classifier_activated"]
    assert event["dp_training"]["epsilon"] == report["epsilon"]


def test_the_noise_follows_the_seed(tmp_path):
    data = write_data(tmp_path / "d.jsonl")
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        assert dp_train("--data", data, "--out", tmp_path / name, "--seed", seed, *FAST).exit_code == 0
        runs[name] = trained_weights(tmp_path / name)["head.weight"]
    assert torch.equal(runs["a"], runs["b"])
    assert not torch.equal(runs["a"], runs["c"])


def test_a_resumed_run_continues_the_accountant_and_stops_at_the_budget(tmp_path):
    data, out = write_data(tmp_path / "d.jsonl", count=48, users=16), tmp_path / "out"
    common = ("--data", data, "--out", out, "--user-field", "user", "--epsilon", "2", *FAST[2:],
              "--checkpoint-every", "1")
    assert dp_train(*common, "--epochs", "2", "--max-steps", "2").exit_code == 0
    paused = report_of(out)
    assert (paused["steps"], paused["stopped"], paused["privacy_unit"]) == (2, "paused", "user")
    assert dp_train(*common, "--epochs", "2").exit_code == 0
    done = report_of(out)
    assert done["steps"] == done["planned_steps"] == 4 and done["stopped"] == "completed"
    # The resumed run's accountant holds all 4 steps, not only the 2 it took itself.
    again = PRVAccountant()
    again.history = [(done["noise_multiplier"], done["sample_rate"], 4)]
    assert done["epsilon"] == pytest.approx(again.get_epsilon(done["delta"]), abs=0.01)
    assert done["epsilon"] > paused["epsilon"]
    # Asking for more epochs keeps the noise the budget was planned with: the budget stops it.
    more = dp_train(*common, "--epochs", "6")
    assert more.exit_code == 0 and "budget exhausted" in more.output
    exhausted = report_of(out)
    assert exhausted["stopped"] == "budget exhausted" and exhausted["noise_multiplier"] == done["noise_multiplier"]
    assert exhausted["steps"] < exhausted["planned_steps"] == 12 and exhausted["epsilon"] <= 2.0
    # Another epsilon on the same checkpoint would spend past what it was planned for: refused.
    other = dp_train(*common, "--epsilon", "4")
    assert other.exit_code == 2 and "was written with other settings" in other.output


def test_the_no_dp_baseline_trains_without_a_guarantee(tmp_path):
    out = tmp_path / "out"
    result = dp_train("--data", write_data(tmp_path / "d.jsonl"), "--out", out, "--no-dp", *FAST)
    assert result.exit_code == 0, result.output
    report = report_of(out)
    assert not report["private"] and report["epsilon"] is None and report["steps"] == 5
    assert "**No privacy guarantee**" in (out / "artifact" / "MODEL_CARD.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("per_user", [False, True])
def test_a_step_whose_poisson_sample_is_empty_still_trains_on(tmp_path, per_user):
    """12 units sampled at 1/12 a step: some steps draw nobody (this seed's do), and still add noise."""
    lines = [{"text": f"hello number {index}", "unsafe": index % 2, "user": f"u{index % 6}"} for index in range(12)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    result = dp_train("--data", data, "--out", tmp_path / "out", "--batch-size", "1", "--physical-batch-size", "4",
                      "--max-length", "16", "--epochs", "1", *(("--user-field", "user") if per_user else ()))
    assert result.exit_code == 0, result.output
    report = report_of(tmp_path / "out")
    assert report["steps"] == report["planned_steps"] == (6 if per_user else 12) and report["epsilon"] <= 1.0
