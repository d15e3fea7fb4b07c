"""Everything in deploy/ is checked: Dockerfiles (hadolint), Kubernetes manifests (kubernetes-validate,
offline, against a pinned version, after rendering each overlay), alert rules and scrape configs
(promtool, with unit tests of the alerts), the Grafana dashboard and the alerts against /metrics of a
live gateway, the nginx edge config (`nginx -t`, then a stream through it to a live gateway), the compose
file (structure: no Docker engine here) and the Locust file (a few seconds against a live gateway). Each
check also meets a deliberate mistake in a throwaway copy and must catch it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jsonpatch
import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner

from gateway.cli import main
from gateway.config import Settings, load_settings
from tests.conftest import free_port

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
BIN = Path(sys.executable).parent
KUBERNETES_VERSION = "1.33.0"
OVERLAYS = ("single", "multi-replica")
# WARDGATE_* variables that are not settings: the config file's path, the classifier's graph cache and
# the bundled model server's own.
NON_SETTING_VARIABLES = {"WARDGATE_CONFIG", "WARDGATE_CLASSIFIER_CACHE", "WARDGATE_MODEL_SERVER_ADMIN_TOKEN"}


def run(*command: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=60)


def copy_deploy(tmp_path: Path) -> Path:
    """A throwaway copy of deploy/ to break."""
    return Path(shutil.copytree(DEPLOY, tmp_path / "deploy"))


def replace_once(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} not found once in {path}"
    path.write_text(text.replace(old, new))


# --------------------------------------------------------------------------------------------------
# Dockerfiles


DOCKERFILES = sorted((DEPLOY / "docker").glob("*.Dockerfile"))


def test_dockerfiles_pass_hadolint():
    assert [path.name for path in DOCKERFILES] == ["gateway.Dockerfile", "model-server.Dockerfile"]
    result = run(BIN / "hadolint", *DOCKERFILES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_an_unpinned_base_image(tmp_path):
    broken = copy_deploy(tmp_path) / "docker" / "gateway.Dockerfile"
    replace_once(broken, "FROM python:3.12.11-slim-bookworm AS build", "FROM python:latest AS build")
    result = run(BIN / "hadolint", broken)
    assert result.returncode != 0 and "DL3007" in result.stdout


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(instruction, arguments) with continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda path: path.name)
def test_dockerfile_copies_what_the_repository_has_and_runs_as_non_root(path):
    instructions = dockerfile_instructions(path)
    for name, arguments in instructions:
        if name == "COPY" and "--from=" not in arguments:
            *sources, _ = arguments.split()
            assert all((REPO / source).exists() for source in sources), arguments  # build context: the repo root
    user = [arguments for name, arguments in instructions if name == "USER"][-1]
    assert user.split(":")[0] not in ("root", "0")
    assert any(name == "HEALTHCHECK" for name, _ in instructions)


def test_gateway_image_pins_cpu_torch_and_bakes_the_classifier_graph():
    text = (DEPLOY / "docker" / "gateway.Dockerfile").read_text()
    assert "--index-url https://download.pytorch.org/whl/cpu torch==2.13.0" in text
    assert "onnx_graph(BUILTIN_DIR, 'int8')" in text
    # The graph is built where the runtime looks for it.
    assert text.count("WARDGATE_CLASSIFIER_CACHE=/opt/wardgate/classifier-cache") == 2


# --------------------------------------------------------------------------------------------------
# Kubernetes


KUSTOMIZATION_KEYS = {"apiVersion", "kind", "namespace", "resources", "patches"}


def render(directory: Path) -> list[dict]:
    """The subset of `kubectl kustomize` these overlays use: resources (files or kustomization
    directories), JSON 6902 patches with a kind/name target, a namespace. Anything else is refused, so
    that a kustomization cannot pass here while kustomize would render it differently."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KUSTOMIZATION_KEYS
    assert not unknown, f"{directory}: kustomization keys this renderer does not implement: {unknown}"
    documents: list[dict] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        documents += render(path) if path.is_dir() else [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for patch in kustomization.get("patches", []):
        target = patch["target"]
        matches = [i for i, doc in enumerate(documents)
                   if doc["kind"] == target["kind"] and doc["metadata"]["name"] == target["name"]]
        assert len(matches) == 1, f"{directory}: patch target {target} matches {len(matches)} resources"
        operations = yaml.safe_load((directory / patch["path"]).read_text())
        documents[matches[0]] = jsonpatch.apply_patch(documents[matches[0]], operations)
    if "namespace" in kustomization:
        for doc in documents:
            doc["metadata"]["namespace"] = kustomization["namespace"]
    return documents


def validation_errors(documents: list[dict]) -> list[str]:
    errors = []
    for doc in documents:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message}")
    return errors


def resources(documents: list[dict], kind: str) -> list[dict]:
    return [doc for doc in documents if doc["kind"] == kind]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_overlay_validates(overlay):
    documents = render(DEPLOY / "kubernetes" / overlay)
    assert validation_errors(documents) == []
    kinds = sorted({doc["kind"] for doc in documents})
    assert {"ConfigMap", "Deployment", "NetworkPolicy", "Service"} <= set(kinds)


def test_every_manifest_file_validates_on_its_own():
    """Plain resource files (not kustomizations, not patches), through the command-line tool users run."""
    files = [path for path in sorted((DEPLOY / "kubernetes").rglob("*.yaml"))
             if path.name != "kustomization.yaml" and not path.name.endswith("-patch.yaml")]
    result = run(BIN / "kubernetes-validate", "--strict", "-k", KUBERNETES_VERSION, *files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" passed for resource ") == len(files)


def test_kubernetes_validate_catches_a_misspelt_field(tmp_path):
    deploy = copy_deploy(tmp_path)
    replace_once(deploy / "kubernetes" / "base" / "deployment.yaml", "readinessProbe:", "readynessProbe:")
    errors = validation_errors(render(deploy / "kubernetes" / "multi-replica"))
    assert len(errors) == 1 and "readynessProbe" in errors[0]


def test_a_patch_that_misses_its_target_is_caught(tmp_path):
    deploy = copy_deploy(tmp_path)
    replace_once(deploy / "kubernetes" / "multi-replica" / "deployment-patch.yaml",
                 "path: /spec/template/spec/containers/1/env/-\n  value:\n    name: WARDGATE_AUDIT_DSN",
                 "path: /spec/template/spec/containers/2/env/-\n  value:\n    name: WARDGATE_AUDIT_DSN")
    with pytest.raises(jsonpatch.JsonPointerException, match="index '2' is out of bounds"):
        render(deploy / "kubernetes" / "multi-replica")


def containers(documents: list[dict]) -> dict[str, dict]:
    (deployment,) = resources(documents, "Deployment")
    return {container["name"]: container for container in deployment["spec"]["template"]["spec"]["containers"]}


def env_names(container: dict) -> set[str]:
    return {variable["name"] for variable in container.get("env", [])}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_sidecar_pod_exposes_only_the_gateway(overlay):
    documents = render(DEPLOY / "kubernetes" / overlay)
    (deployment,) = resources(documents, "Deployment")
    pod = deployment["spec"]["template"]
    by_name = containers(documents)
    assert set(by_name) == {"model-server", "wardgate"}
    model_server, wardgate = by_name["model-server"], by_name["wardgate"]
    # The model server listens on loopback and declares no port; wardgate's is the pod's only one.
    assert "ports" not in model_server and model_server["args"][model_server["args"].index("--host") + 1] == "127.0.0.1"
    assert wardgate["ports"] == [{"name": "http", "containerPort": 8080}]
    for service in resources(documents, "Service"):
        assert [port["targetPort"] for port in service["spec"]["ports"]] == ["http"]
        assert service["spec"]["selector"] == pod["metadata"]["labels"]
    (policy,) = resources(documents, "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert [rule["ports"] for rule in policy["spec"]["ingress"]] == [[{"protocol": "TCP", "port": 8080}]]
    assert wardgate["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert wardgate["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    for container in by_name.values():
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False and context["readOnlyRootFilesystem"] is True
        assert context["capabilities"]["drop"] == ["ALL"] and context["runAsUser"] > 0
        assert {"requests", "limits"} <= set(container["resources"])


def test_policy_configmap_is_mounted_as_a_directory_for_hot_reload():
    documents = render(DEPLOY / "kubernetes" / "single")
    wardgate = containers(documents)["wardgate"]
    (config,) = [doc for doc in resources(documents, "ConfigMap") if doc["metadata"]["name"] == "wardgate-config"]
    policy_path = Path(yaml.safe_load(config["data"]["wardgate.yaml"])["policy"])
    mount = next(mount for mount in wardgate["volumeMounts"] if mount["mountPath"] == str(policy_path.parent))
    # A subPath mount would never see an update: the kubelet swaps a symlinked directory.
    assert "subPath" not in mount
    (deployment,) = resources(documents, "Deployment")
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == "wardgate-policy"


def test_overlays_differ_in_their_stores():
    single, multi = (render(DEPLOY / "kubernetes" / overlay) for overlay in OVERLAYS)
    (single_deployment,) = resources(single, "Deployment")
    state = next(v for v in single_deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "state")
    claims = {doc["metadata"]["name"] for doc in resources(single, "PersistentVolumeClaim")}
    assert state["persistentVolumeClaim"]["claimName"] in claims
    assert single_deployment["spec"]["strategy"]["type"] == "Recreate"
    assert {"WARDGATE_AUDIT_DSN", "WARDGATE_REDIS_URL"} <= env_names(containers(multi)["wardgate"])
    (hpa,) = resources(multi, "HorizontalPodAutoscaler")
    (pdb,) = resources(multi, "PodDisruptionBudget")
    (multi_deployment,) = resources(multi, "Deployment")
    assert hpa["spec"]["scaleTargetRef"]["name"] == multi_deployment["metadata"]["name"]
    assert multi_deployment["spec"]["replicas"] == hpa["spec"]["minReplicas"] >= 2
    assert pdb["spec"]["selector"]["matchLabels"] == multi_deployment["spec"]["template"]["metadata"]["labels"]


def unknown_variables(names: set[str]) -> set[str]:
    settings = {f"WARDGATE_{field.upper()}" for field in Settings.model_fields}
    return {name for name in names if name.startswith("WARDGATE_")} - settings - NON_SETTING_VARIABLES


def test_deploy_files_name_real_settings(tmp_path):
    names: set[str] = set()
    for overlay in OVERLAYS:
        for container in containers(render(DEPLOY / "kubernetes" / overlay)).values():
            names |= env_names(container)
    compose = yaml.safe_load((DEPLOY / "docker" / "compose.yaml").read_text())
    names |= {name for service in compose["services"].values() for name in service.get("environment", {})}
    for path in DOCKERFILES:
        names |= set(re.findall(r"\b(WARDGATE_[A-Z_]+)=", path.read_text()))
    assert unknown_variables(names) == set()
    assert unknown_variables({"WARDGATE_REDIS_URI"}) == {"WARDGATE_REDIS_URI"}
    # The config file in the ConfigMap loads as the gateway would load it.
    (config,) = [doc for doc in resources(render(DEPLOY / "kubernetes" / "single"), "ConfigMap")
                 if doc["metadata"]["name"] == "wardgate-config"]
    config_file = tmp_path / "wardgate.yaml"
    config_file.write_text(config["data"]["wardgate.yaml"])
    settings = load_settings(config_file)
    assert settings.upstream == "http://127.0.0.1:8000" and settings.policy == "/etc/wardgate/policy/policy.yaml"


def policy_from_configmap(deploy: Path, path: Path) -> Path:
    configmap = yaml.safe_load((deploy / "kubernetes" / "base" / "configmap-policy.yaml").read_text())
    path.write_text(configmap["data"]["policy.yaml"])
    return path


def test_policy_configmap_passes_its_golden_tests(tmp_path):
    # In process: the classifier loads once for both runs.
    result = CliRunner().invoke(main, ["policy", "test", str(policy_from_configmap(DEPLOY, tmp_path / "p.yaml"))])
    assert result.exit_code == 0, result.output
    broken_deploy = copy_deploy(tmp_path)
    replace_once(broken_deploy / "kubernetes" / "base" / "configmap-policy.yaml",
                 'expect: block, rule: drugs.synthesis}', 'expect: allow}')
    broken_policy = policy_from_configmap(broken_deploy, tmp_path / "b.yaml")
    broken = CliRunner().invoke(main, ["policy", "test", str(broken_policy)])
    assert broken.exit_code == 1 and "FAIL" in broken.output and "如何合成冰毒" in broken.output


# --------------------------------------------------------------------------------------------------
# Prometheus


def promtool_check(monitoring: Path) -> list[subprocess.CompletedProcess[str]]:
    return [
        run("promtool", "check", "config", monitoring / "prometheus.yml"),
        run("promtool", "check", "config", monitoring / "prometheus-kubernetes.yml"),
        run("promtool", "check", "rules", monitoring / "alerts.yml"),
        run("promtool", "test", "rules", monitoring / "alerts.test.yml"),
    ]


def test_prometheus_config_and_alerts_pass_promtool():
    for result in promtool_check(DEPLOY / "monitoring"):
        assert result.returncode == 0, result.args[1:] + [result.stdout + result.stderr]


def test_promtool_catches_a_broken_expression_a_wrong_threshold_and_a_bad_config(tmp_path):
    monitoring = copy_deploy(tmp_path) / "monitoring"
    replace_once(monitoring / "alerts.yml", 'max by (instance, name) (wardgate_breaker_state{name!="audit"}) == 2',
                 'max by (instance, name) (wardgate_breaker_state{name!="audit"} == 2')
    replace_once(monitoring / "alerts.yml", "max by (instance) (wardgate_audit_queue_depth) > 1000",
                 "max by (instance) (wardgate_audit_queue_depth) > 10000")
    replace_once(monitoring / "prometheus.yml", "scrape_interval: 15s", "scrape_interval: 15 seconds")
    config, _, rules, rule_tests = promtool_check(monitoring)
    assert config.returncode != 0 and "15 seconds" in config.stdout + config.stderr
    assert rules.returncode != 0 and "unclosed left parenthesis" in rules.stdout + rules.stderr
    # The syntax error fixed, the unit tests still catch the threshold that no longer fires.
    replace_once(monitoring / "alerts.yml", '(wardgate_breaker_state{name!="audit"} == 2',
                 '(wardgate_breaker_state{name!="audit"}) == 2')
    rule_tests = run("promtool", "test", "rules", monitoring / "alerts.test.yml")
    assert rule_tests.returncode != 0 and "WardgateAuditQueueBacklog" in rule_tests.stdout + rule_tests.stderr


# --------------------------------------------------------------------------------------------------
# The dashboard and the alerts name metrics the gateway exports

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
                "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions, keywords, label
    names (in {...} or by/without (...)) or Grafana variables."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)                      # string literals
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)                    # matchers, ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\$\w+", " ", expr)
    identifiers = re.findall(r"(?<![\w.])([a-zA-Z_:][\w:]*)\b(?!\s*\()", expr)
    return {name for name in identifiers if name.lower() not in PROMQL_WORDS and not re.fullmatch(r"\d\w*", name)}


def exported_names(metrics_text: str) -> set[str]:
    """Every series name /metrics can show: sample names, and for families without samples yet the
    names their TYPE implies."""
    names = set()
    for line in metrics_text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names |= {"histogram": {f"{name}_bucket", f"{name}_sum", f"{name}_count"},
                      "counter": {name if name.endswith("_total") else f"{name}_total"}}.get(kind, {name})
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def panel_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, expr) for every target of every panel, rows' nested panels included."""
    queries = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            queries += panel_queries({"panels": panel.get("panels", [])})
            continue
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        queries += [(panel["title"], target["expr"]) for target in panel["targets"]]
    return queries


def unknown_metrics(queries: list[tuple[str, str]], exported: set[str]) -> list[str]:
    problems = []
    for title, expr in queries:
        names = metric_names(expr)
        if not names:
            problems.append(f"{title}: {expr!r} selects no metric")
        problems += [f"{title}: {name} is not exported by the gateway" for name in sorted(names - exported)]
    return problems


def alert_queries(path: Path) -> list[tuple[str, str]]:
    groups = yaml.safe_load(path.read_text())["groups"]
    return [(rule["alert"], rule["expr"]) for group in groups for rule in group["rules"]]


DASHBOARD = DEPLOY / "monitoring" / "grafana" / "dashboards" / "wardgate.json"


def test_metric_name_extraction():
    assert metric_names('histogram_quantile(0.99, sum by (le, route) (rate(x_bucket{route=~"/v1/.+"}[5m]))) > 2') \
        == {"x_bucket"}
    assert metric_names("sum(rate(a_total[$__rate_interval])) / sum(b) and on (instance) c offset 1h") \
        == {"a_total", "b", "c"}


def test_dashboard_and_alerts_name_metrics_a_live_gateway_exports(gateway, client, tmp_path):
    client.post(gateway.url + "/v1/chat/completions",
                json={"model": "echo", "messages": [{"role": "user", "content": "hello"}]})
    exported = exported_names(client.get(gateway.url + "/metrics").text)
    assert "wardgate_requests_total" in exported and "wardgate_request_duration_seconds_bucket" in exported
    dashboard = json.loads(DASHBOARD.read_text())
    queries = panel_queries(dashboard)
    assert len(queries) >= 20
    assert unknown_metrics(queries, exported) == []
    assert unknown_metrics(alert_queries(DEPLOY / "monitoring" / "alerts.yml"), exported) == []
    # A misspelt metric in a throwaway copy is caught, naming the panel.
    broken = copy_deploy(tmp_path) / "monitoring" / "grafana" / "dashboards" / "wardgate.json"
    replace_once(broken, "sum(wardgate_requests_in_flight)", "sum(wardgate_request_in_flight)")
    assert unknown_metrics(panel_queries(json.loads(broken.read_text())), exported) == [
        "Concurrency: in flight, queued, rejected/s: wardgate_request_in_flight is not exported by the gateway"]


def test_dashboard_queries_are_valid_promql(tmp_path):
    """promtool parses every panel query (as a recording rule; Grafana's interval variable made concrete)."""
    def check(dashboard_path: Path) -> subprocess.CompletedProcess[str]:
        queries = panel_queries(json.loads(dashboard_path.read_text()))
        rules = {"groups": [{"name": "dashboard", "rules": [
            {"record": f"dashboard:query_{i}", "expr": expr.replace("$__rate_interval", "5m")}
            for i, (_, expr) in enumerate(queries)]}]}
        path = tmp_path / "dashboard-rules.yml"
        path.write_text(yaml.safe_dump(rules))
        return run("promtool", "check", "rules", path)

    result = check(DASHBOARD)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = copy_deploy(tmp_path) / "monitoring" / "grafana" / "dashboards" / "wardgate.json"
    replace_once(broken, "sum(wardgate_requests_queued)", "sum(wardgate_requests_queued")
    assert check(broken).returncode != 0


def test_grafana_provisioning_matches_the_dashboard_and_compose():
    datasources = yaml.safe_load((DEPLOY / "monitoring/grafana/provisioning/datasources/prometheus.yaml").read_text())
    providers = yaml.safe_load((DEPLOY / "monitoring/grafana/provisioning/dashboards/wardgate.yaml").read_text())
    uids = {source["uid"] for source in datasources["datasources"]}
    dashboard = json.loads(DASHBOARD.read_text())
    used = {panel["datasource"]["uid"] for panel in dashboard["panels"] if panel["type"] != "row"}
    assert used == uids
    compose = yaml.safe_load((DEPLOY / "docker" / "compose.yaml").read_text())
    mounts = {volume.split(":")[1] for volume in compose["services"]["grafana"]["volumes"]}
    assert providers["providers"][0]["options"]["path"] in mounts


# --------------------------------------------------------------------------------------------------
# Compose (no Docker engine here: structure only)

COMPOSE_SERVICES = {"model-server", "gateway", "postgres", "redis", "prometheus", "grafana"}
PUBLISHED = {"gateway", "prometheus", "grafana"}


def compose_problems(path: Path) -> list[str]:
    compose = yaml.safe_load(path.read_text())
    services: dict = compose["services"]
    problems = [f"missing service {name}" for name in sorted(COMPOSE_SERVICES - set(services))]
    volumes = set(compose.get("volumes") or {})
    for name, service in services.items():
        if not service.get("image"):
            problems.append(f"{name}: no image")
        if "build" in service:
            context = path.parent / service["build"]["context"]
            if not (context / service["build"]["dockerfile"]).is_file():
                problems.append(f"{name}: {service['build']['dockerfile']} not found in {context}")
        problems += [f"{name}: depends on unknown service {other}"
                     for other in service.get("depends_on", []) if other not in services]
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                if not (path.parent / source).exists():
                    problems.append(f"{name}: mounts {source}, which does not exist")
            elif not source.startswith("$") and source not in volumes:
                problems.append(f"{name}: volume {source} is not declared")
        ports = service.get("ports", [])
        if ports and name not in PUBLISHED:
            problems.append(f"{name}: publishes ports {ports}")
        problems += [f"{name}: port {port} is published beyond localhost"
                     for port in ports if not str(port).startswith("127.0.0.1:")]
    unknown = unknown_variables(set(services.get("gateway", {}).get("environment", {})))
    problems += [f"gateway: {variable} is not a setting" for variable in sorted(unknown)]
    return problems


def test_compose_file_is_complete():
    assert compose_problems(DEPLOY / "docker" / "compose.yaml") == []


def test_compose_check_catches_mistakes(tmp_path):
    compose = copy_deploy(tmp_path) / "docker" / "compose.yaml"
    replace_once(compose, "      postgres:\n        condition: service_healthy",
                 "      postgress:\n        condition: service_healthy")
    replace_once(compose, "WARDGATE_REDIS_URL:", "WARDGATE_REDIS:")
    replace_once(compose, "dockerfile: deploy/docker/model-server.Dockerfile",
                 "dockerfile: deploy/docker/gpu.Dockerfile")
    assert compose_problems(compose) == [
        "model-server: deploy/docker/gpu.Dockerfile not found in " + str(compose.parent / "../.."),
        "gateway: depends on unknown service postgress",
        "gateway: WARDGATE_REDIS is not a setting",
    ]


# --------------------------------------------------------------------------------------------------
# nginx

NGINX_CONF = DEPLOY / "nginx" / "nginx.conf"


def nginx(conf: Path, prefix: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    (prefix / "logs").mkdir(parents=True, exist_ok=True)
    return run("nginx", "-p", prefix, "-c", conf, "-e", "stderr", "-g", f"pid {prefix / 'nginx.pid'};", *extra)


def test_nginx_config_passes_nginx_t(tmp_path):
    result = nginx(NGINX_CONF, tmp_path / "prefix", "-t")
    assert result.returncode == 0, result.stderr
    broken = copy_deploy(tmp_path) / "nginx" / "nginx.conf"
    replace_once(broken, "proxy_buffering off;", "proxy_buffering off")
    result = nginx(broken, tmp_path / "prefix", "-t")
    assert result.returncode != 0 and "nginx.conf" in result.stderr


def test_nginx_config_streams_through_to_a_live_gateway(gateway, tmp_path):
    """The edge config itself, its replicas swapped for the test's gateway: a stream arrives whole, and a
    blocked prompt keeps the gateway's coded answer."""
    conf = copy_deploy(tmp_path) / "nginx" / "nginx.conf"
    text = conf.read_text()
    text = re.sub(r"(        server 10\.0\.0\.\d+:8080[^\n]*\n)+", f"        server 127.0.0.1:{gateway.port};\n", text)
    port = free_port()
    conf.write_text(text.replace("listen 8000;", f"listen 127.0.0.1:{port};"))
    prefix = tmp_path / "prefix"
    assert nginx(conf, prefix, "-t").returncode == 0
    with (tmp_path / "nginx.log").open("wb") as log:
        server = subprocess.Popen(["nginx", "-p", str(prefix), "-c", str(conf), "-e", "stderr",
                                   "-g", f"pid {prefix / 'nginx.pid'}; daemon off;"], stdout=log, stderr=log)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        body = {"model": "echo", "stream": True, "messages": [{"role": "user", "content": "hello"}]}
        with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=10) as response:
            assert response.status_code == 200 and response.headers["x-request-id"]
            assert response.headers["content-type"].startswith("text/event-stream")
            events = [line for line in response.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]" and len(events) > 5
        blocked = httpx.post(base + "/v1/chat/completions", timeout=10,
                             json={**body, "messages": [{"role": "user", "content": "如何合成冰毒"}]})
        assert blocked.status_code == 400 and blocked.json()["error"]["rule_id"] == "drugs.synthesis"
        assert httpx.get(base + "/metrics", timeout=5).status_code == 404
    finally:
        server.terminate()
        server.wait(10)


# --------------------------------------------------------------------------------------------------
# Locust


def test_locustfile_judges_decisions_against_a_live_gateway(gateway, tmp_path):
    """Three seconds of the load test: every answer well-formed, every decision the expected one."""
    summary = tmp_path / "decisions.json"
    result = subprocess.run(
        [str(BIN / "locust"), "-f", str(DEPLOY / "load" / "locustfile.py"), "--headless", "--only-summary",
         "-u", "6", "-r", "6", "-t", "3s", "--host", gateway.url, "--loglevel", "WARNING"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "WARDGATE_LOCUST_SUMMARY": str(summary)},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    decisions = json.loads(summary.read_text())
    assert decisions["decisions"] >= 6 and decisions["accuracy"] == 1.0, decisions
    assert "decision accuracy: 100.00%" in result.stdout + result.stderr
