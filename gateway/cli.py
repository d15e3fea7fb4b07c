"""`wardgate` command line."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from gateway.config import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from gateway.pipeline import Pipeline
    from policies.history import PolicyHistory
    from policies.schema import Policy


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="wardgate")
def main() -> None:
    """wardgate: safety and compliance gateway for self-hosted LLMs."""


@main.command()
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              envvar="WARDGATE_CONFIG", help="YAML config file (env WARDGATE_CONFIG).")
@click.option("--upstream", help="Base URL of the OpenAI-compatible model server, without /v1 "
              "(default: start the bundled model server).")
@click.option("--model", "bundled_model_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Model directory for the bundled model server (default: the demo model).")
@click.option("--host", help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=int, help="Port to listen on (default 8080).")
@click.option("--policy", help="Policy file; `default` (the shipped one, the default) or `none`.")
@click.option("--workers", type=int, help="Worker processes (default 1).")
@click.option("--max-body-bytes", type=int, help="Largest request body accepted (default 1 MiB).")
@click.option("--max-concurrency", type=int, help="Requests in flight at once (default 256).")
@click.option("--max-queue", type=int, help="Requests allowed to wait for a slot (default 256).")
@click.option("--queue-timeout", "queue_timeout_s", type=float, help="Longest wait for a slot, s (default 5).")
@click.option("--connect-timeout", "connect_timeout_s", type=float, help="Upstream connect timeout, s.")
@click.option("--read-timeout", "read_timeout_s", type=float, help="Longest upstream silence, s.")
@click.option("--total-timeout", "total_timeout_s", type=float, help="Longest upstream exchange, s.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
def serve(config_file: Path | None, **options: object) -> None:
    """Run the gateway. Every option can also come from the config file or WARDGATE_<OPTION>."""
    from gateway.telemetry import configure_logging  # imported here so that the other commands start fast

    settings = _settings_or_exit(config_file, options)
    configure_logging(settings.log_level)
    from gateway.app import policy_path

    path = policy_path(settings.policy)
    if path is not None:
        _check_policy_or_exit(path)  # refuse a broken policy before starting anything
    bundled = None
    if settings.upstream is None:
        from gateway.bundled_model import BundledModelError, start_bundled_model_server

        try:
            bundled, upstream = start_bundled_model_server(settings.bundled_model_dir, settings.bundled_quantize)
        except BundledModelError as exc:
            click.echo(f"wardgate: {exc}", err=True)
            sys.exit(1)
        settings = settings.model_copy(update={"upstream": upstream})
    try:
        _run_gateway(settings)
    finally:
        if bundled is not None:
            from gateway.bundled_model import stop

            stop(bundled)


def _check_policy_or_exit(path: Path) -> None:
    import asyncio

    from gateway.policy_reload import failed_golden_tests, prepare
    from policies.schema import PolicyError

    try:
        failures = asyncio.run(failed_golden_tests(prepare(path)))
    except PolicyError as exc:
        click.echo(f"wardgate: invalid policy:\n{exc}", err=True)
        sys.exit(2)
    if failures:
        click.echo("wardgate: policy refused:\n" + "\n".join(failures), err=True)
        sys.exit(2)


def _run_gateway(settings: Settings) -> None:
    import uvicorn

    if settings.workers > 1:
        # Worker processes import gateway.asgi, which reads the environment layer: hand them the
        # fully resolved settings there so that file, env and command line agree in every worker.
        os.environ.update(settings.as_environment())
        app: object = "gateway.asgi:app"
    else:
        from gateway.app import create_app

        app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,  # RequestTelemetry writes the one access line per request
        server_header=False,
        proxy_headers=False,  # nothing here uses the client address; don't pay to rewrite it
        lifespan="on",
    )


def _settings_or_exit(config_file: Path | None, options: dict[str, object]) -> Settings:
    try:
        return load_settings(config_file, **options)
    except ConfigError as exc:
        click.echo(f"wardgate: {exc}", err=True)
        sys.exit(2)


@main.group("model-server", invoke_without_command=True)
@click.option("--model", "model_dir", type=click.Path(file_okay=False, path_type=Path),
              envvar="WARDGATE_MODEL_DIR", help="Local Hugging Face causal-LM directory.")
@click.option("--quantize", type=click.Choice(["int8", "none"]), default="int8", show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--max-batch-size", type=click.IntRange(1), default=16, show_default=True)
@click.option("--max-wait-ms", type=click.FloatRange(0), default=5.0, show_default=True,
              help="How long a request waits for others to share its batch.")
@click.option("--max-queue", type=click.IntRange(1), default=256, show_default=True,
              help="Requests allowed to wait; beyond: 429 WG6001.")
@click.option("--max-batch-tokens", type=click.IntRange(1), default=65536, show_default=True,
              help="Prompt + max_tokens summed over a batch (the KV-cache budget).")
@click.option("--admin-token", envvar="WARDGATE_MODEL_SERVER_ADMIN_TOKEN",
              help="Bearer token for POST /admin/model (env WARDGATE_MODEL_SERVER_ADMIN_TOKEN).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info")
@click.pass_context
def model_server(ctx: click.Context, model_dir: Path | None, log_level: str, host: str, port: int,
                 **options: object) -> None:
    """Run the bundled OpenAI-compatible model server (or a subcommand)."""
    if ctx.invoked_subcommand is not None:
        return
    if model_dir is None:
        raise click.UsageError("--model DIR is required (or create one: wardgate model-server init-demo DIR)")
    import uvicorn

    from gateway.model_server.app import ModelServerSettings, create_model_server_app
    from gateway.telemetry import configure_logging

    configure_logging(log_level)
    app = create_model_server_app(ModelServerSettings(model_dir=model_dir, **options))
    uvicorn.run(app, host=host, port=port, loop="uvloop", http="httptools", log_config=None,
                access_log=False, server_header=False, lifespan="on")


@model_server.command("init-demo")
@click.argument("directory", type=click.Path(path_type=Path))
def init_demo_cmd(directory: Path) -> None:
    """Write a small demo model (Llama architecture, RANDOM weights, local tokenizer) into DIRECTORY."""
    from gateway.model_server.demo import DemoDirectoryError, init_demo

    try:
        init_demo(directory)
    except DemoDirectoryError as exc:
        click.echo(f"wardgate: {exc}", err=True)
        sys.exit(2)
    click.echo(f"demo model written to {directory} (random weights: it produces gibberish)")


@main.group()
def policy() -> None:
    """Validate and test policy files."""


def _pipeline_or_exit(path: Path) -> Pipeline:
    from gateway.pipeline import load_pipeline
    from policies.schema import PolicyError

    try:
        return load_pipeline(path)
    except PolicyError as exc:
        click.echo(f"wardgate: invalid policy:\n{exc}", err=True)
        sys.exit(2)


@policy.command("validate")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def policy_validate(file: Path) -> None:
    """Check FILE against the schema and compile its patterns; warn about slow regexes."""
    pipeline = _pipeline_or_exit(file)
    for rule_id, pattern in pipeline.slow_patterns():
        click.echo(f"warning: rule {rule_id}: regex {pattern!r} has no literal atoms: it runs on every text")
    click.echo(f"{file}: valid (version {pipeline.policy.version}, {len(pipeline.policy.tests)} golden tests)")


@policy.command("test")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def policy_test(file: Path) -> None:
    """Run FILE's golden tests; exit 1 if any fails."""
    import asyncio

    from gateway.pipeline import golden_failures

    pipeline = _pipeline_or_exit(file)
    results = asyncio.run(pipeline.run_golden_tests())
    width = max([len("expected"), *(max(len(r.expected), len(r.got)) for r in results)])
    click.echo(f"{'result':<6}  {'direction':<9}  {'expected':<{width}}  {'got':<{width}}  text")
    for result in results:
        text = result.test.text if len(result.test.text) <= 40 else result.test.text[:37] + "..."
        status = "ok" if result.passed else "FAIL"
        direction = result.test.direction
        click.echo(f"{status:<6}  {direction:<9}  {result.expected:<{width}}  {result.got:<{width}}  {text}")
    failures = golden_failures(results, pipeline.policy)
    for failure in failures:
        click.echo(failure, err=True)
    click.echo(f"{len(results) - len(failures)} passed, {len(failures)} failed")
    sys.exit(1 if failures else 0)


_CONFIG_OPTION = click.option(
    "--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), envvar="WARDGATE_CONFIG",
    help="The gateway's config file, for its state_dir (env WARDGATE_CONFIG).")
_STATE_DIR_OPTION = click.option(
    "--state-dir", type=click.Path(file_okay=False, path_type=Path),
    help="The gateway's state directory (default: from the config, else $XDG_STATE_HOME/wardgate).")


def _history(config_file: Path | None, state_dir: Path | None) -> PolicyHistory:
    from policies.history import PolicyHistory

    return PolicyHistory(_settings_or_exit(config_file, {"state_dir": state_dir}).policy_history_path)


def _exit_on_history_error(exc: object) -> None:
    click.echo(f"wardgate: {exc}", err=True)
    sys.exit(2)


@policy.command("history")
@_CONFIG_OPTION
@_STATE_DIR_OPTION
@click.option("--limit", type=click.IntRange(1), default=20, show_default=True)
def policy_history(config_file: Path | None, state_dir: Path | None, limit: int) -> None:
    """List policy activations, refusals and rollbacks, newest first."""
    from datetime import UTC, datetime

    from policies.history import HistoryError

    history = _history(config_file, state_dir)
    try:
        events = history.events(limit)
    except HistoryError as exc:
        _exit_on_history_error(exc)
    if not events:
        click.echo(f"no policy history yet in {history.path}")
        return
    click.echo(f"{'at (UTC)':<19}  {'event':<9}  {'version':<20}  {'digest':<12}  reason")
    for event in events:
        at = datetime.fromtimestamp(event.at, UTC).strftime("%Y-%m-%d %H:%M:%S")
        reason = event.reason.splitlines()[0] if event.reason else ""
        click.echo(f"{at:<19}  {event.event:<9}  {event.version or '-':<20}  {(event.digest or '-')[:12]:<12}  "
                   f"{reason or event.policy_path}")


@policy.command("diff")
@click.argument("old")
@click.argument("new")
@_CONFIG_OPTION
@_STATE_DIR_OPTION
def policy_diff(old: str, new: str, config_file: Path | None, state_dir: Path | None) -> None:
    """What changed from OLD to NEW: each a policy file, or a version (or digest prefix) from the
    history. Exit status 0: no difference, 1: differences, 2: an error."""
    import tempfile

    from policies.diff import diff_policies

    with tempfile.TemporaryDirectory() as scratch:
        before, after = (_policy_from_file_or_history(name, Path(scratch) / label, config_file, state_dir)
                         for name, label in ((old, "old"), (new, "new")))
    lines = diff_policies(before, after)
    for line in lines:
        click.echo(line)
    if not lines:
        click.echo("no differences")
    sys.exit(1 if lines else 0)


def _policy_from_file_or_history(name: str, scratch: Path, config_file: Path | None,
                                 state_dir: Path | None) -> Policy:
    from policies.history import HistoryError, materialize

    path = Path(name)
    if not path.is_file():
        try:
            path = materialize(_history(config_file, state_dir).version(name), scratch)
        except HistoryError as exc:
            _exit_on_history_error(f"{name!r} is neither a policy file nor a version in the history: {exc}")
    return _pipeline_or_exit(path).policy


@policy.command("rollback")
@click.argument("version", required=False)
@_CONFIG_OPTION
@_STATE_DIR_OPTION
@click.option("--print", "print_only", is_flag=True,
              help="Print the stored policy file instead of restoring it (for a read-only file, e.g. a ConfigMap).")
def policy_rollback(version: str | None, config_file: Path | None, state_dir: Path | None, print_only: bool) -> None:
    """Restore a past policy version (default: the one active before the current one) into its
    files; a running gateway picks it up like any edit, after validating it again."""
    import asyncio
    import tempfile

    from gateway.pipeline import golden_failures
    from policies.history import HistoryError, materialize

    history = _history(config_file, state_dir)
    try:
        target = history.version(version) if version else history.previous_version()
    except HistoryError as exc:
        _exit_on_history_error(exc)
    if print_only:
        click.echo(target.files[str(target.policy_path)], nl=False)
        return
    with tempfile.TemporaryDirectory() as scratch:  # check it still passes before touching anything
        pipeline = _pipeline_or_exit(materialize(target, Path(scratch)))
        failures = golden_failures(asyncio.run(pipeline.run_golden_tests()), pipeline.policy)
    if failures:
        click.echo(f"wardgate: version {target.version} fails its golden tests now:\n" + "\n".join(failures), err=True)
        sys.exit(2)
    try:
        _restore_files(target.files, target.policy_path)
        history.record_rollback(target, "restored by `wardgate policy rollback`")
    except OSError as exc:
        click.echo(f"wardgate: cannot restore {target.policy_path}: {exc}\nIf the file is read-only (a "
                   f"ConfigMap), restore it there; `wardgate policy rollback {target.version} --print` prints it.",
                   err=True)
        sys.exit(1)
    except HistoryError as exc:
        _exit_on_history_error(exc)
    click.echo(f"restored {target.policy_path} to version {target.version} ({target.digest[:12]}); "
               "a running gateway activates it within a second (see GET /admin/policy)")


def _restore_files(stored: dict[str, str], policy_file: Path) -> None:
    """Write back the stored files, each atomically, the policy file last so that a watching
    gateway sees its lexicons first. Shipped (builtin) lexicons belong to the package: never written."""
    from importlib.resources import files

    builtin_dir = Path(str(files("policies").joinpath("lexicons"))).resolve()
    for name in sorted(stored, key=lambda name: name == str(policy_file)):
        path = Path(name)
        if path.resolve().is_relative_to(builtin_dir):
            if not path.is_file() or path.read_text(encoding="utf-8") != stored[name]:
                click.echo(f"warning: shipped lexicon {path.name} differs from the stored version", err=True)
            continue
        temporary = path.with_name(f".{path.name}.rollback-{os.getpid()}")
        try:
            temporary.write_bytes(stored[name].encode("utf-8"))
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)


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


def _rows_or_exit(path: Path, need_truth: bool = False) -> list:
    from classifiers.labels import ClassifierError
    from classifiers.scoring import read_rows

    try:
        return read_rows(path, need_truth)
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
def classifier_score(infile: Path, outfile: Path, model: str, quantize: str) -> None:
    """Score each line's "text" of INFILE (JSONL); one {"unsafe", "categories"} line per input, in order."""
    from classifiers.scoring import score_line

    rows = _rows_or_exit(infile)  # every line checked before anything is written
    scores = _score_all(_classifier_or_exit(model, quantize), [row.text for row in rows])
    temporary = outfile.with_name(f".{outfile.name}.partial")
    temporary.write_text("".join(score_line(row) + "\n" for row in scores), encoding="utf-8")
    temporary.replace(outfile)
    click.echo(f"{len(rows)} lines scored into {outfile}", err=True)


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
@click.option("--epochs", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--hard-negative-repeats", type=click.IntRange(min=1), default=1, show_default=True,
              help="Times each project-written hard negative (safe text with trigger words) is seen per epoch.")
@click.option("--max-minutes", type=click.FloatRange(min=0, min_open=True),
              help="Stop after this long (a checkpoint is saved; run again to resume).")
def classifier_train(out: Path, data_dir: Path | None, mode: str, epochs: float, seed: int,
                     hard_negative_repeats: int, max_minutes: float | None) -> None:
    """Fine-tune the classifier on the public data; reproducible from the seed, resumable."""
    from classifiers.train import TrainConfig, train

    config = TrainConfig(mode=mode, epochs=epochs, seed=seed, hard_negative_repeats=hard_negative_repeats,
                         max_minutes=max_minutes)
    report = train(out, config, data_dir)
    for key, value in report.items():
        if isinstance(value, dict) and "auprc" in value:
            click.echo(f"{key:<22} AUPRC {value['auprc']:.3f}  F1 {value['f1']:.3f}  FPR {value['fpr']:.3f}")
    click.echo(f"artifact: {out / 'artifact'} ({report['steps']}/{report['total_steps']} steps)")


@main.group()
def keys() -> None:
    """Manage API keys (only their SHA-256 is ever configured)."""


@keys.command("new")
@click.option("--tenant", required=True, help="Tenant the key belongs to.")
@click.option("--id", "key_id", required=True, help="Name of the key in logs and audit records.")
def keys_new(tenant: str, key_id: str) -> None:
    """Generate a key: prints the key once (give it to the client) and its config entry."""
    from gateway.auth import generate_key, hash_key

    key = generate_key()
    click.echo(f"key (shown once, give it to the client): {key}", err=True)
    click.echo(f"- {{id: {key_id}, tenant: {tenant}, sha256: {hash_key(key)}}}")


@keys.command("hash")
def keys_hash() -> None:
    """Print the SHA-256 of a key read from standard input (so it stays out of shell history)."""
    from gateway.auth import hash_key

    key = sys.stdin.readline().strip()
    if not key:
        raise click.UsageError("no key on standard input")
    click.echo(hash_key(key))


@main.command("errors")
@click.option("--markdown", is_flag=True, help="Print docs/errors.md.")
def errors_cmd(markdown: bool) -> None:
    """List the error catalogue."""
    from gateway.errors import CATALOGUE, render_markdown

    if markdown:
        click.echo(render_markdown(), nl=False)
        return
    for kind in CATALOGUE.values():
        click.echo(f"{kind.code}  {kind.status}  {kind.name:<28} {kind.message}")
