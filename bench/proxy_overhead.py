#!/usr/bin/env python3
"""Pass-through overhead of wardgate against nginx and LiteLLM, in one run.

Every target answers the same small non-streaming ``POST /v1/chat/completions``
and is driven by ``wrk`` at several connection counts:

* ``direct``     - straight to the fake upstream (no proxy at all);
* ``nginx``      - Debian nginx as a plain keepalive reverse proxy, one worker:
                   the physical-limit reference for a one-worker proxy;
* ``nginx-auto`` - the same with ``worker_processes auto``;
* ``litellm``    - LiteLLM proxy, one worker, model ``openai/demo`` on the
                   upstream (installed on demand into .bench/litellm-venv);
* ``starlette-minimal`` - bench/minimal_proxy.py: Starlette + one aiohttp
                   call and nothing else, the ceiling of a Python proxy on
                   this stack (what wardgate's own work is measured against);
* ``wardgate``   - ``wardgate serve`` with no inspection stages (``--policy none``),
                   no audit log (``--audit-dsn none``) and an API key (auth, admission
                   control, access logs and metrics all on);
* ``wardgate-audit`` - the same with the audit log on (SQLite, group commit, each
                   response held until its record is committed): the pair's ratio
                   is what the audit log costs;
                   ``--wardgate-args`` adds options, e.g. ``"--workers 2"``.

The fake upstream is a separate nginx instance returning a static
``chat.completion`` body, so it costs a few microseconds per request.

Usage::

    .venv/bin/python bench/proxy_overhead.py                  # everything, 10 s a point
    .venv/bin/python bench/proxy_overhead.py --duration 3 --targets direct,nginx,wardgate
    .venv/bin/python bench/proxy_overhead.py --targets nginx-auto,wardgate \\
        --wardgate-args="--workers 2" --server-cpus 0,1 --load-cpus 0,1

How to read the figures
-----------------------
The box has 2 cores and the load generator competes with the server. By
default the proxy under test is pinned to CPU 0 (``--server-cpus``) and wrk
plus the fake upstream to CPU 1 (``--load-cpus``), so:

* a proxy gets one whole core, as a one-worker process would in production,
  and nginx (1 worker) vs wardgate (1 worker) compares like with like;
* ``direct`` measures the harness ceiling (wrk and upstream sharing CPU 1):
  no proxied figure can exceed it, and a proxy close to it (nginx usually is)
  is limited by the harness, not by itself;
* ``*.rps`` at c16/c64 is throughput at saturation of the proxy's core;
  ``*.c1.p50`` is per-request latency with no queueing, and
  ``*.c1.p50_added_vs_direct`` is the latency the proxy adds to one request.
  It includes two hops between the cores (wake-ups of an idle CPU) that any
  proxy on its own core pays: nginx's figure is the floor, not zero;
* at c16/c64 the latencies are mostly queueing (Little's law: c / rps).

Absolute numbers only hold for this machine and run; ratios between targets
measured in the same run (``wardgate/nginx``, ``wardgate/litellm``) are what
to compare across machines. To measure scaling with ``--workers N`` the
server needs more than one core: pass ``--server-cpus 0,1 --load-cpus 0,1``
(unpinned), and then everything competes for both cores.

Any target with non-2xx responses or socket errors is flagged: a proxy that
fails fast is not fast. A target that cannot be started (LiteLLM not
installable, wardgate not installed) is reported as unavailable and the run
goes on with the others.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from harness import free_port, pinned, progress, running, warn_invalid  # bench/harness.py, next to this script
from harness import http as harness_http
from harness import wait_ready as harness_wait_ready

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
WARDGATE_BIN = REPO_ROOT / ".venv" / "bin" / "wardgate"
LITELLM_VENV = REPO_ROOT / ".bench" / "litellm-venv"
LITELLM_BIN = LITELLM_VENV / "bin" / "litellm"

ALL_TARGETS = ("direct", "nginx", "nginx-auto", "litellm", "starlette-minimal", "wardgate", "wardgate-audit")
# Ratios are printed for every target against each of these measured before it.
REFERENCES = ("direct", "nginx", "litellm", "starlette-minimal", "wardgate")

CHAT_PATH = "/v1/chat/completions"
REQUEST_BODY = json.dumps(
    {"model": "demo", "messages": [{"role": "user", "content": "Hello, how are you?"}]},
    separators=(",", ":"),
)
# LiteLLM refuses to start without a master key (and a real deployment has
# one), so every target gets the same bearer token; the others ignore or
# forward it. A fresh one per run: nothing secret lives in the repo.
API_KEY = "sk-bench-" + secrets.token_hex(16)

LITELLM_ENV = {
    # LiteLLM fetches its model cost map and a few catalogues from GitHub at
    # startup or on some routes unless told to use the copies bundled in the
    # package; offline those fetches only add DNS failures and timeouts.
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
    "LITELLM_LOCAL_BLOG_POSTS": "True",
    "LITELLM_LOCAL_POLICY_TEMPLATES": "True",
    "LITELLM_LOCAL_AUTOROUTER_PRESETS": "True",
    # Libraries it pulls in (tokenizers, hub clients).
    "HF_HUB_OFFLINE": "1",
    "DO_NOT_TRACK": "1",
    # No admin UI to serve, and no per-request log lines to write.
    "DISABLE_ADMIN_UI": "True",
    "LITELLM_LOG": "ERROR",
}

STARTUP_TIMEOUT_S = {"litellm": 180.0}
DEFAULT_STARTUP_TIMEOUT_S = 30.0


class TargetUnavailable(Exception):
    """A target could not be started or does not answer correctly."""


@dataclass(frozen=True)
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    non2xx: int
    socket_errors: int

    @property
    def errors(self) -> int:
        return self.non2xx + self.socket_errors


@dataclass(frozen=True)
class BenchConfig:
    duration_s: int
    warmup_s: int
    concurrency: tuple[int, ...]
    server_cpus: frozenset[int]
    load_cpus: frozenset[int]
    wardgate_args: tuple[str, ...]
    workdir: Path
    nginx_bin: str
    wrk_bin: str


# --------------------------------------------------------------------------
# Processes


def render(template: str, out: Path, **values: str) -> Path:
    """Fill ``@NAME@`` placeholders (nginx and Lua use ``$`` and braces)."""
    text = (BENCH_DIR / template).read_text()
    for name, value in values.items():
        text = text.replace(f"@{name}@", value)
    out.write_text(text)
    return out


def http(method: str, url: str, body: str | None = None) -> tuple[int, str]:
    return harness_http(method, url, body.encode() if body is not None else None,
                        {"Authorization": f"Bearer {API_KEY}"})


def wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path, timeout_s: float) -> None:
    harness_wait_ready(proc, lambda: http("GET", url)[0] == 200, log, timeout_s, TargetUnavailable)


def check_chat(base_url: str) -> None:
    """One real request first: a misconfigured target must not be benchmarked."""
    try:
        status, text = http("POST", base_url + CHAT_PATH, REQUEST_BODY)
    except OSError as exc:
        raise TargetUnavailable(f"chat request failed: {exc}") from exc
    if status != 200 or '"choices"' not in text:
        raise TargetUnavailable(f"chat request returned {status}: {text[:300]}")


# --------------------------------------------------------------------------
# Servers


def nginx_cmd(cfg: BenchConfig, prefix: Path, conf: Path) -> list[str]:
    # -e: without it nginx opens the distribution's error log before reading
    # the config.
    return [cfg.nginx_bin, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]


def nginx_prefix(workdir: Path, name: str) -> Path:
    prefix = workdir / name
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    return prefix


def user_directive() -> str:
    # nginx as root drops workers to "nobody" unless told otherwise; that user
    # could not write in our temp dir.
    return "user root;" if os.geteuid() == 0 else ""


@contextmanager
def fake_upstream(cfg: BenchConfig) -> Iterator[str]:
    prefix = nginx_prefix(cfg.workdir, "upstream")
    port = free_port()
    conf = render(
        "nginx_upstream.conf.template",
        prefix / "nginx.conf",
        PORT=str(port),
        USER_DIRECTIVE=user_directive(),
    )
    base_url = f"http://127.0.0.1:{port}"
    # On the load CPUs: the upstream is part of the harness, not the proxy.
    log = prefix / "out.log"
    with running(nginx_cmd(cfg, prefix, conf), log, cfg.load_cpus) as proc:
        wait_ready(proc, base_url + "/v1/models", log, DEFAULT_STARTUP_TIMEOUT_S)
        check_chat(base_url)
        yield base_url


def nginx_proxy_cmd(cfg: BenchConfig, upstream_port: int, port: int, workers: str) -> list[str]:
    prefix = nginx_prefix(cfg.workdir, f"nginx-{workers}")
    conf = render(
        "nginx_proxy.conf.template",
        prefix / "nginx.conf",
        PORT=str(port),
        UPSTREAM_PORT=str(upstream_port),
        WORKERS=workers,
        USER_DIRECTIVE=user_directive(),
    )
    return nginx_cmd(cfg, prefix, conf)


def ensure_litellm() -> None:
    """Install LiteLLM into its own venv: its pins clash with ours."""
    if LITELLM_BIN.exists():
        return
    print(f"# installing litellm[proxy] into {LITELLM_VENV} (once)", file=sys.stderr)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        subprocess.run(
            [str(LITELLM_VENV / "bin" / "pip"), "install", "-q", "litellm[proxy]"],
            check=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        raise TargetUnavailable(f"could not install litellm[proxy]: {exc}") from exc


def litellm_cmd(cfg: BenchConfig, upstream_port: int, port: int) -> list[str]:
    ensure_litellm()
    conf = render(
        "litellm_config.yaml.template",
        cfg.workdir / "litellm.yaml",
        UPSTREAM_PORT=str(upstream_port),
    )
    return [
        str(LITELLM_BIN),
        "--config",
        str(conf),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]


def minimal_proxy_cmd(port: int) -> list[str]:
    uvicorn = WARDGATE_BIN.parent / "uvicorn"
    if not uvicorn.exists():
        raise TargetUnavailable(f"{uvicorn} not installed")
    return [
        str(uvicorn), "minimal_proxy:app", "--app-dir", str(BENCH_DIR), "--host", "127.0.0.1", "--port", str(port),
        "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning",
    ]


def wardgate_cmd(cfg: BenchConfig, upstream_url: str, port: int, audit: bool) -> list[str]:
    if not WARDGATE_BIN.exists():
        raise TargetUnavailable(f"{WARDGATE_BIN} not installed")
    return [
        str(WARDGATE_BIN),
        "serve",
        "--upstream",
        upstream_url,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        # Pass-through overhead: no inspection stages (bench/blacklist.py measures those); the audit
        # log only for `wardgate-audit` (its SQLite file in the workdir), so that the pair shows its cost.
        "--policy",
        "none",
        *([] if audit else ["--audit-dsn", "none"]),
        *cfg.wardgate_args,
    ]


@contextmanager
def proxy_target(name: str, cfg: BenchConfig, upstream_url: str) -> Iterator[str]:
    """Start the proxy ``name`` in front of the upstream; yield its base URL."""
    upstream_port = int(upstream_url.rsplit(":", 1)[1])
    port = free_port()
    env = None
    if name == "nginx":
        cmd, health = nginx_proxy_cmd(cfg, upstream_port, port, "1"), "/v1/models"
    elif name == "nginx-auto":
        cmd, health = nginx_proxy_cmd(cfg, upstream_port, port, "auto"), "/v1/models"
    elif name == "litellm":
        cmd, health = litellm_cmd(cfg, upstream_port, port), "/health/liveliness"
        env = {**os.environ, **LITELLM_ENV, "LITELLM_MASTER_KEY": API_KEY}
    elif name == "starlette-minimal":
        cmd, health = minimal_proxy_cmd(port), "/v1/models"
        env = {**os.environ, "WARDGATE_BENCH_UPSTREAM": upstream_url}
    elif name in ("wardgate", "wardgate-audit"):
        cmd, health = wardgate_cmd(cfg, upstream_url, port, audit=name == "wardgate-audit"), "/healthz"
        # Authentication on, as in production: the bench's bearer token is a configured key.
        api_keys = [{"id": "bench", "tenant": "bench", "sha256": hashlib.sha256(API_KEY.encode()).hexdigest()}]
        env = {**os.environ, "WARDGATE_API_KEYS": json.dumps(api_keys),
               "WARDGATE_STATE_DIR": str(cfg.workdir / f"{name}-state")}
    else:
        raise ValueError(name)
    base_url = f"http://127.0.0.1:{port}"
    log = cfg.workdir / f"{name}.log"
    with running(cmd, log, cfg.server_cpus, env=env, cwd=cfg.workdir) as proc:
        timeout_s = STARTUP_TIMEOUT_S.get(name, DEFAULT_STARTUP_TIMEOUT_S)
        wait_ready(proc, base_url + health, log, timeout_s)
        check_chat(base_url)
        yield base_url


# --------------------------------------------------------------------------
# Load generation


UNIT_TO_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def to_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if match is None:
        raise ValueError(f"unexpected wrk duration {text!r}")
    return float(match.group(1)) * UNIT_TO_MS[match.group(2)]


def parse_wrk(output: str) -> WrkResult:
    def find(pattern: str) -> re.Match[str] | None:
        return re.search(pattern, output, re.MULTILINE)

    rps = find(r"^Requests/sec:\s+([\d.]+)")
    p50 = find(r"^\s+50%\s+(\S+)")
    p99 = find(r"^\s+99%\s+(\S+)")
    if rps is None or p50 is None or p99 is None:
        raise ValueError(f"cannot parse wrk output:\n{output}")
    # wrk prints these two lines only when they are non-zero.
    non2xx = find(r"^\s+Non-2xx or 3xx responses:\s+(\d+)")
    sock = find(r"^\s+Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
    return WrkResult(
        rps=float(rps.group(1)),
        p50_ms=to_ms(p50.group(1)),
        p99_ms=to_ms(p99.group(1)),
        non2xx=int(non2xx.group(1)) if non2xx else 0,
        socket_errors=sum(int(n) for n in sock.groups()) if sock else 0,
    )


def run_wrk(cfg: BenchConfig, script: Path, url: str, connections: int, duration_s: int) -> WrkResult:
    # wrk needs -t <= -c; two threads otherwise, as the load CPUs are few.
    threads = 1 if connections == 1 else 2
    cmd = [
        cfg.wrk_bin,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration_s}s",
        "--latency",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=pinned(cfg.load_cpus))
    if done.returncode != 0:
        raise TargetUnavailable(f"wrk failed ({done.returncode}): {done.stderr.strip()}")
    return parse_wrk(done.stdout)


def measure(cfg: BenchConfig, script: Path, base_url: str) -> dict[int, WrkResult]:
    url = base_url + CHAT_PATH
    # Warm-up fills connection pools and caches; its figures are discarded.
    run_wrk(cfg, script, url, max(cfg.concurrency), cfg.warmup_s)
    return {c: run_wrk(cfg, script, url, c, cfg.duration_s) for c in cfg.concurrency}


# --------------------------------------------------------------------------
# Report


Results = dict[str, dict[int, WrkResult]]


def metric_lines(results: Results, concurrency: Sequence[int]) -> list[str]:
    lines = []
    for name, points in results.items():
        for c, r in points.items():
            lines += [
                f"{name}.c{c}.rps: {r.rps:.0f} req/s",
                f"{name}.c{c}.p50: {r.p50_ms:.3f} ms",
                f"{name}.c{c}.p99: {r.p99_ms:.3f} ms",
                f"{name}.c{c}.errors: {r.errors} responses",
            ]
    for name in results:
        for ref in REFERENCES:
            if ref == name or ref not in results or ALL_TARGETS.index(ref) > ALL_TARGETS.index(name):
                continue
            for c in concurrency:
                if results[ref][c].rps > 0:
                    ratio = results[name][c].rps / results[ref][c].rps
                    lines.append(f"{name}/{ref}.c{c}.rps: {ratio:.3g}")
    if "direct" in results:
        direct = results["direct"]
        for name, points in results.items():
            if name == "direct":
                continue
            for c, r in points.items():
                lines += [
                    f"{name}.c{c}.p50_added_vs_direct: {r.p50_ms - direct[c].p50_ms:.3f} ms",
                    f"{name}.c{c}.p99_added_vs_direct: {r.p99_ms - direct[c].p99_ms:.3f} ms",
                ]
    return lines


def table(results: Results) -> str:
    nginx = results.get("nginx")
    header = f"{'target':<19}{'conns':>6}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'vs nginx':>10}{'errors':>8}"
    rows = [header, "-" * len(header)]
    for name, points in results.items():
        for c, r in points.items():
            vs_nginx = f"{r.rps / nginx[c].rps:.3f}" if nginx and nginx[c].rps > 0 else "-"
            rows.append(f"{name:<19}{c:>6}{r.rps:>10.0f}{r.p50_ms:>10.3f}{r.p99_ms:>10.3f}{vs_nginx:>10}{r.errors:>8}")
    return "\n".join(rows)


def report(results: Results, unavailable: dict[str, str], cfg: BenchConfig, load_before: float) -> None:
    print(
        f"# duration {cfg.duration_s} s per point, server CPUs {sorted(cfg.server_cpus)}, "
        f"wrk+upstream CPUs {sorted(cfg.load_cpus)}, wardgate args {list(cfg.wardgate_args)}"
    )
    # Anything else running on 2 cores skews every figure; this shows whether it did.
    print(f"# load average (1 min) before the run: {load_before:.2f}")
    for line in metric_lines(results, cfg.concurrency):
        print(line)
    for name, reason in unavailable.items():
        print(f"{name}: UNAVAILABLE - " + reason.replace("\n", "\n    "))
    warn_invalid(results, "non-2xx responses or socket errors")
    print()
    print(table(results))


# --------------------------------------------------------------------------
# Main



def bench_all(cfg: BenchConfig, targets: Sequence[str]) -> tuple[Results, dict[str, str]]:
    script = render("wrk_post.lua.template", cfg.workdir / "post.lua", BODY=REQUEST_BODY, API_KEY=API_KEY)
    results: Results = {}
    unavailable: dict[str, str] = {}
    with fake_upstream(cfg) as upstream_url:
        for name in targets:
            progress(f"{name}: starting")
            try:
                if name == "direct":
                    results[name] = measure(cfg, script, upstream_url)
                else:
                    with proxy_target(name, cfg, upstream_url) as base_url:
                        progress(f"{name}: measuring at {base_url}")
                        results[name] = measure(cfg, script, base_url)
            except TargetUnavailable as exc:
                unavailable[name] = str(exc)
                progress(f"{name}: UNAVAILABLE - {exc}")
    return results, unavailable


def cpu_set(text: str) -> frozenset[int]:
    cpus = frozenset(int(part) for part in text.split(","))
    missing = cpus - os.sched_getaffinity(0)
    if missing:
        raise argparse.ArgumentTypeError(f"CPUs {sorted(missing)} not available")
    return cpus


def target_list(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = set(names) - set(ALL_TARGETS)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown targets {sorted(unknown)}; choose from {ALL_TARGETS}")
    # Canonical order, so references are measured before what is compared to them.
    return tuple(name for name in ALL_TARGETS if name in names)


def int_list(text: str) -> tuple[int, ...]:
    return tuple(sorted({int(part) for part in text.split(",")}))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Proxy overhead of wardgate vs direct, nginx and LiteLLM (see module docstring)."
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured point (default 10)")
    # LiteLLM imports parts of itself lazily on its first requests: 5 s lets
    # that settle before anything is measured.
    parser.add_argument("--warmup", type=int, default=5, help="warm-up seconds per target (default 5)")
    parser.add_argument(
        "--concurrency",
        type=int_list,
        default=(1, 16, 64),
        help="comma-separated connection counts (default 1,16,64)",
    )
    parser.add_argument(
        "--targets",
        type=target_list,
        default=ALL_TARGETS,
        help=f"comma-separated subset of {','.join(ALL_TARGETS)}",
    )
    parser.add_argument(
        "--wardgate-args",
        default="",
        help='extra arguments for "wardgate serve"; use the = form: --wardgate-args="--workers 2"',
    )
    parser.add_argument("--server-cpus", type=cpu_set, default="0", help="CPUs for the proxy under test (default 0)")
    parser.add_argument("--load-cpus", type=cpu_set, default="1", help="CPUs for wrk and the fake upstream (default 1)")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the temp dir with configs and server logs")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # nginx lives in /usr/sbin, which is not on every user's PATH.
    tools = {name: shutil.which(name) or shutil.which(name, path="/usr/sbin") for name in ("nginx", "wrk")}
    for name, path in tools.items():
        if path is None:
            print(f"error: {name} not found (apt-get install {name})", file=sys.stderr)
            return 2
    # SIGTERM takes the same clean-up path as Ctrl-C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    workdir = Path(tempfile.mkdtemp(prefix="wardgate-bench-"))
    cfg = BenchConfig(
        duration_s=args.duration,
        warmup_s=args.warmup,
        concurrency=args.concurrency,
        server_cpus=args.server_cpus,
        load_cpus=args.load_cpus,
        wardgate_args=tuple(shlex.split(args.wardgate_args)),
        workdir=workdir,
        nginx_bin=str(tools["nginx"]),
        wrk_bin=str(tools["wrk"]),
    )
    load_before = os.getloadavg()[0]
    try:
        results, unavailable = bench_all(cfg, args.targets)
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130
    finally:
        if args.keep_workdir:
            print(f"# workdir kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    report(results, unavailable, cfg, load_before)
    return 0


if __name__ == "__main__":
    sys.exit(main())
