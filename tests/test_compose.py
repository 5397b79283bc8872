"""Static checks of the docker-compose deployment: no Docker engine is needed.

docker-compose.yml, deploy/ (Dockerfile, compose configs, Prometheus and Grafana files) and
the configs they name must agree with each other and with the code: every command names a
real module, every config validates, every port a service listens on is the one compose
exposes, Prometheus scrapes and the healthcheck probes, and no secret is written down.
Also tests ``python -m broker`` and ``vigil admin-token``, which the `setup` service
runs (real mosquitto_passwd; no broker is started).
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import stat
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import msgspec
import pytest
import yaml
from pydantic import BaseModel

from broker.__main__ import main as broker_main
from broker.plugin_build import CFLAGS
from broker.provision import SERVICE_ACCESS, render_acl
from vigil import dynsec
from vigil.agent_settings import AgentConfig, load_agent_config
from vigil.config_core import ConfigError
from vigil.settings import (
    AlertEngineSettings,
    ApiSettings,
    IngestSettings,
    NotifierSettings,
    VigilConfig,
    load_config,
)
from vigil.topics import Topics

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
VIGIL_IMAGE = "vigil:local"
VIGIL_DOCKERFILE = "deploy/Dockerfile"
#: the broker's image: eclipse-mosquitto:2 with Vigil's client-id plugin built in
BROKER_DOCKERFILE = "deploy/mosquitto/Dockerfile"
BROKER_BASE = "eclipse-mosquitto:2"
PLUGIN_SOURCE = "broker/plugin/vigil_clientid.c"

#: compose service -> (Python module, section of vigil.yaml)
CLOUD_SERVICES = {
    "ingest": ("ingest_service", "ingest"),
    "alert-engine": ("alert_engine", "alert_engine"),
    "notifier": ("notifier", "notifier"),
    "api": ("api", "api"),
}
AGENTS = ("demo-1", "demo-2", "demo-3")
#: the cloud services that talk to InfluxDB (with the services' user)
STORAGE_CLIENTS = ("ingest", "api")
INFLUX = ("influx-1", "influx-2", "influx-3")
EXPECTED_SERVICES = {
    "setup",
    "influx-setup",
    "mosquitto",
    *INFLUX,
    *CLOUD_SERVICES,
    *AGENTS,
    "mailpit",
    "prometheus",
    "grafana",
}
ONE_SHOT = {"setup", "influx-setup"}
IMAGES = {
    "mailpit": "axllent/mailpit",
    "prometheus": "prom/prometheus",
    "grafana": "grafana/grafana",
}
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
PYTHONS = {"python", "python3", "python3.11"}


# -- reading the compose file ---------------------------------------------------------------
@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    bind: bool
    read_only: bool


def _load_yaml(path: Path) -> Any:
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing"
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = _load_yaml(COMPOSE_FILE)
    assert isinstance(data, dict), "docker-compose.yml: top level must be a mapping"
    assert isinstance(data.get("services"), dict), "docker-compose.yml: no services mapping"
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    missing = EXPECTED_SERVICES - set(compose["services"])
    if missing:
        pytest.fail(f"docker-compose.yml: services missing: {sorted(missing)}")
    return compose["services"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def mounts(svc: Mapping[str, Any]) -> list[Mount]:
    out = []
    for vol in svc.get("volumes", []):
        if isinstance(vol, str):
            parts = vol.split(":")
            source, target = parts[0], parts[1]
            mode = parts[2] if len(parts) > 2 else "rw"
            bind = source.startswith((".", "/", "~"))
            out.append(Mount(source, target, bind, "ro" in mode.split(",")))
        else:
            out.append(
                Mount(
                    vol.get("source", ""),
                    vol["target"],
                    vol.get("type") == "bind",
                    bool(vol.get("read_only")),
                )
            )
    return out


def _under(path: str, folder: str) -> bool:
    return PurePosixPath(path).is_relative_to(PurePosixPath(folder))


def mount_of(svc: Mapping[str, Any], container_path: str | Path) -> Mount | None:
    """The mount holding ``container_path`` in this service (the deepest one)."""
    hits = [m for m in mounts(svc) if _under(str(container_path), m.target)]
    return max(hits, key=lambda m: len(m.target), default=None)


def host_path(svc: Mapping[str, Any], container_path: str) -> Path | None:
    """Where in the repository a bind-mounted container path comes from."""
    m = mount_of(svc, container_path)
    if m is None or not m.bind:
        return None
    rel = PurePosixPath(container_path).relative_to(m.target)
    return (ROOT / m.source / rel).resolve()


def environment(svc: Mapping[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def container_ports(svc: Mapping[str, Any], key: str) -> set[int]:
    """Container-side ports of ``ports`` or ``expose``."""
    out = set()
    for entry in svc.get(key, []):
        if isinstance(entry, dict):
            out.add(int(entry["target"]))
        else:
            out.add(int(str(entry).split("/")[0].rsplit(":", 1)[-1]))
    return out


def command_lines(svc: Mapping[str, Any]) -> list[list[str]]:
    """Each command the service runs, as argv; ``sh -c SCRIPT`` is split into its lines."""
    parts: list[str] = []
    for key in ("entrypoint", "command"):
        value = svc.get(key)
        if value:
            parts += shlex.split(value) if isinstance(value, str) else [str(v) for v in value]
    if len(parts) >= 3 and parts[0] in {"sh", "bash", "/bin/sh"} and "c" in parts[1]:
        script = parts[2].replace("\\\n", " ")
        return [
            shlex.split(line) for chunk in re.split(r"\n|&&|;", script) if (line := chunk.strip())
        ]
    return [parts] if parts else []


def dockerfile_of(svc: Mapping[str, Any]) -> str | None:
    """The Dockerfile a service builds, relative to the repository; None if it builds none."""
    build = svc.get("build")
    if build is None:
        return None
    context = build if isinstance(build, str) else build.get("context", ".")
    name = build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile"
    return str((ROOT / context / name).resolve().relative_to(ROOT))


def uses_vigil_image(svc: Mapping[str, Any]) -> bool:
    return svc.get("image") == VIGIL_IMAGE or dockerfile_of(svc) == VIGIL_DOCKERFILE


def arg(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def args(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


def python_module(argv: list[str]) -> str | None:
    if len(argv) >= 3 and argv[0] in PYTHONS and argv[1] == "-m":
        return argv[2]
    return None


def setup_provision(services: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        argv
        for argv in command_lines(services["setup"])
        if python_module(argv) == "broker" and "provision" in argv
    ]
    assert lines, "setup: runs no `python -m broker provision`"
    return lines[0]


def config_path(svc: Mapping[str, Any], name: str) -> Path:
    """The repository file behind the service's ``--config``."""
    argv = next((a for a in command_lines(svc) if "--config" in a), None)
    assert argv, f"{name}: its command has no --config"
    cpath = arg(argv, "--config")
    assert cpath, f"{name}: --config has no value"
    hp = host_path(svc, cpath)
    assert hp is not None, f"{name}: --config {cpath} is not on a bind mount from the repository"
    return hp


#: State files a service follows but another writes (mounted read-only where only read).
FOLLOWED = frozenset({"storage.layout_path"})


def cloud_config(services: dict[str, dict[str, Any]], name: str) -> VigilConfig:
    svc = services[name]
    return load_config(config_path(svc, name), environ=environment(svc))


def agent_config(services: dict[str, dict[str, Any]], name: str) -> AgentConfig:
    svc = services[name]
    env = {k: v for k, v in environment(svc).items() if k.startswith("VIGIL_AGENT__")}
    return load_agent_config(config_path(svc, name), environ=env)


def metrics_port(services: dict[str, dict[str, Any]], name: str) -> int:
    if name in CLOUD_SERVICES:
        section = getattr(cloud_config(services, name), CLOUD_SERVICES[name][1])
        return int(section.metrics_port)
    return agent_config(services, name).metrics_port


def healthcheck_text(svc: Mapping[str, Any]) -> str:
    test = svc["healthcheck"]["test"]
    return test if isinstance(test, str) else " ".join(str(t) for t in test)


def _fail_if(problems: list[str], what: str) -> None:
    if problems:
        pytest.fail(f"{what}:\n  " + "\n  ".join(problems))


# -- shape ----------------------------------------------------------------------------------
def test_compose_describes_exactly_the_system(compose: dict[str, Any]) -> None:
    """Every service of the system, and nothing the tests here do not check."""
    assert set(compose["services"]) == EXPECTED_SERVICES


def test_images(services: dict[str, dict[str, Any]]) -> None:
    problems = [
        f"{s}: image is {services[s].get('image')!r}, expected influxdb:1.8"
        for s in INFLUX
        if services[s].get("image") != "influxdb:1.8"
    ]
    problems += [
        f"{s}: image is {services[s].get('image')!r}, expected {want}[:tag]"
        for s, want in IMAGES.items()
        if not str(services[s].get("image", "")).startswith(want)
    ]
    problems += [
        f"{s}: does not run the Vigil image {VIGIL_IMAGE}"
        for s in ["setup", *CLOUD_SERVICES, *AGENTS]
        if not uses_vigil_image(services[s])
    ]
    _fail_if(problems, "wrong images")


def test_long_running_services_have_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    problems = []
    for name, svc in services.items():
        if name in ONE_SHOT:
            continue
        hc = svc.get("healthcheck")
        if not hc or not hc.get("test") or hc.get("disable"):
            problems.append(f"{name}: no healthcheck")
        elif svc.get("restart") not in {"always", "unless-stopped", "on-failure"}:
            problems.append(f"{name}: restart policy {svc.get('restart')!r} (should restart)")
    _fail_if(problems, "long-running services without healthcheck/restart")


def test_setup_is_one_shot_and_gates_everything_that_needs_it(
    services: dict[str, dict[str, Any]],
) -> None:
    assert str(services["setup"].get("restart", "no")) == "no", "setup: must not restart"
    problems = []
    for name in ["mosquitto", *CLOUD_SERVICES, *AGENTS]:
        dep = (services[name].get("depends_on") or {}).get("setup")
        if not dep or dep.get("condition") != "service_completed_successfully":
            problems.append(f"{name}: does not wait for setup (service_completed_successfully)")
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        for dep_name, cond in deps.items() if isinstance(deps, dict) else []:
            if dep_name not in services:
                problems.append(f"{name}: depends on unknown service {dep_name}")
            elif (
                cond.get("condition") == "service_healthy"
                and "healthcheck" not in services[dep_name]
            ):
                problems.append(f"{name}: waits for {dep_name} healthy, which has no healthcheck")
    _fail_if(problems, "dependency problems")


# -- commands and files ---------------------------------------------------------------------
def _dockerfile_copies(dockerfile: Path) -> list[tuple[str, str]]:
    pairs = []
    for line in dockerfile.read_text(encoding="utf-8").splitlines():
        words = line.split()
        if words and words[0] == "COPY" and not any(w.startswith("--from") for w in words):
            srcs, dest = [w for w in words[1:-1] if not w.startswith("--")], words[-1]
            pairs += [(s.rstrip("/"), dest) for s in srcs]
    return pairs


def test_commands_name_real_modules_or_console_scripts(
    services: dict[str, dict[str, Any]], pyproject: dict[str, Any]
) -> None:
    scripts = set(pyproject["project"]["scripts"])
    copies = _dockerfile_copies(DEPLOY / "Dockerfile")
    problems = []
    for name, svc in services.items():
        if not uses_vigil_image(svc):
            continue
        lines = command_lines(svc)
        if not lines:
            problems.append(f"{name}: no command")
        for argv in lines:
            module = python_module(argv)
            if module:
                pkg = ROOT / module.replace(".", "/")
                if not ((pkg / "__main__.py").is_file() or pkg.with_suffix(".py").is_file()):
                    problems.append(
                        f"{name}: `python -m {module}`: no {module}/__main__.py in the repository"
                    )
            elif argv[0] in PYTHONS and len(argv) > 1 and argv[1].endswith(".py"):
                rel = argv[1].removeprefix("/app/")
                if not (ROOT / rel).is_file():
                    problems.append(f"{name}: script {argv[1]} does not exist in the repository")
                elif not any(_under(rel, src) for src, _ in copies):
                    problems.append(f"{name}: script {rel} is not copied by deploy/Dockerfile")
            elif argv[0] not in scripts:
                problems.append(
                    f"{name}: {argv[0]!r} is neither `python -m <module>` nor a "
                    "console script of pyproject.toml"
                )
    _fail_if(problems, "commands that name nothing real")


def test_every_repository_path_compose_names_exists(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    problems = []
    for name, svc in services.items():
        build = svc.get("build")
        if build:
            context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = context / (
                build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile"
            )
            if not dockerfile.is_file():
                problems.append(f"{name}: build file {dockerfile.relative_to(ROOT)} is missing")
        for m in mounts(svc):
            if m.bind and not (ROOT / m.source).exists():
                problems.append(f"{name}: mounts {m.source}, which does not exist")
            if not m.bind and m.source not in (compose.get("volumes") or {}):
                problems.append(f"{name}: named volume {m.source} is not declared")
        for env_file in svc.get("env_file", []) if isinstance(svc.get("env_file"), list) else []:
            if not (ROOT / env_file).is_file():
                problems.append(f"{name}: env_file {env_file} is missing")
    for path in (
        "deploy/prometheus/prometheus.yml",
        "deploy/grafana/provisioning/datasources/vigil.yaml",
        "deploy/grafana/provisioning/dashboards/vigil.yaml",
        VIGIL_DOCKERFILE,
        BROKER_DOCKERFILE,
        PLUGIN_SOURCE,
        "requirements.lock",
    ):
        if not (ROOT / path).is_file():
            problems.append(f"{path} is missing")
    _fail_if(problems, "paths compose relies on")


def test_dockerfile_builds_one_image_for_all_of_vigil(pyproject: dict[str, Any]) -> None:
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim", text, re.M), "Dockerfile: not python:3.11-slim"
    # mosquitto_passwd is in Debian's "mosquitto" package, not in mosquitto-clients.
    assert re.search(r"apt-get install[^\n]*\bmosquitto\b(?!-)", text), (
        "Dockerfile: does not install the Debian package 'mosquitto' (mosquitto_passwd)"
    )
    assert "pip install -r requirements.lock" in text, "Dockerfile: lock file not installed"
    assert re.search(r"pip install --no-deps \.", text), "Dockerfile: project not installed"
    copied = {src for src, _ in _dockerfile_copies(DEPLOY / "Dockerfile")}
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    missing = sorted(packages - copied)
    assert not missing, f"Dockerfile: packages not copied into the image: {missing}"
    assert "." not in copied, "Dockerfile: COPY . would take .vigil (local secrets) along"
    assert re.search(r"^USER (?!root)\S+", text, re.M), "Dockerfile: runs as root"


def _instructions(dockerfile: Path) -> list[list[str]]:
    """A Dockerfile's instructions as words: continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines()]
    return [shlex.split(line) for line in lines if line and not line.startswith("#")]


def test_broker_image_is_mosquitto_with_the_plugin_setup_loads(
    services: dict[str, dict[str, Any]],
) -> None:
    """The broker refuses client ids to anyone but their owners only if the plugin is in its
    image where the mosquitto.conf that setup writes loads it from."""
    mosq = services["mosquitto"]
    assert dockerfile_of(mosq) == BROKER_DOCKERFILE, (
        f"mosquitto: does not build {BROKER_DOCKERFILE}"
    )
    assert mosq.get("image") != VIGIL_IMAGE, "mosquitto: would overwrite the Vigil image's tag"
    steps = _instructions(ROOT / BROKER_DOCKERFILE)
    bases = [w[1] for w in steps if w[0] == "FROM"]
    # The build stage too: the plugin must be compiled for the image's own libc.
    assert bases and all(b == BROKER_BASE for b in bases), f"{BROKER_DOCKERFILE}: FROM {bases}"
    copied = [w[1] for w in steps if w[0] == "COPY" and not w[1].startswith("--from")]
    assert PLUGIN_SOURCE in copied, f"{BROKER_DOCKERFILE}: does not copy {PLUGIN_SOURCE}"
    compiles = [
        w for w in steps if w[0] == "RUN" and "cc" in w and Path(PLUGIN_SOURCE).name in " ".join(w)
    ]
    assert compiles, f"{BROKER_DOCKERFILE}: does not compile {PLUGIN_SOURCE} with cc"
    missing = [f for f in CFLAGS if f not in compiles[0]]
    assert not missing, f"{BROKER_DOCKERFILE}: compiles without {missing} (broker/plugin_build.py)"
    final = steps[max(i for i, w in enumerate(steps) if w[0] == "FROM") :]
    installed = [w[-1] for w in final if w[0] == "COPY" and w[1].startswith("--from")]
    plugin = arg(setup_provision(services), "--plugin")
    assert plugin, "setup: provision has no --plugin: the broker would load a path in no image"
    assert plugin in installed, (
        f"setup: --plugin {plugin}, but {BROKER_DOCKERFILE} installs the plugin at {installed}"
    )
    ignore = (ROOT / f"{BROKER_DOCKERFILE}.dockerignore").read_text(encoding="utf-8").split()
    assert "*" in ignore and f"!{Path(PLUGIN_SOURCE).parent}/" in ignore, (
        f"{BROKER_DOCKERFILE}.dockerignore: the context must be {Path(PLUGIN_SOURCE).parent}/ only"
    )


# -- configuration --------------------------------------------------------------------------
def test_configs_validate(services: dict[str, dict[str, Any]]) -> None:
    problems = []
    for name in [*CLOUD_SERVICES, *AGENTS]:
        svc = services[name]
        try:
            path = config_path(svc, name)
        except AssertionError as exc:
            problems.append(str(exc))
            continue
        loader = load_config if name in CLOUD_SERVICES else load_agent_config
        for env in ({}, environment(svc)):
            try:
                loader(path, environ=env)
            except ConfigError as exc:
                problems.append(f"{name}: {exc}")
    _fail_if(problems, "configs that do not validate")


def test_cloud_services_share_one_config(services: dict[str, dict[str, Any]]) -> None:
    paths = {name: config_path(services[name], name) for name in CLOUD_SERVICES}
    assert len(set(paths.values())) == 1, f"cloud services use different configs: {paths}"
    assert next(iter(paths.values())) == (DEPLOY / "config" / "vigil.yaml").resolve()


def _items(model: Any) -> Iterator[tuple[str, Any]]:
    """A settings model's (field, value) pairs: pydantic (cloud) or msgspec (agent)."""
    if isinstance(model, msgspec.Struct):
        yield from ((k, getattr(model, k)) for k in model.__struct_fields__)
    else:
        yield from model


def _paths_in(model: Any) -> Iterator[tuple[str, Path]]:
    for key, value in _items(model):
        if isinstance(value, Path):
            yield key, value
        elif isinstance(value, BaseModel | msgspec.Struct):
            yield from ((f"{key}.{k}", v) for k, v in _paths_in(value))


def ca_for_devices(services: dict[str, dict[str, Any]]) -> str:
    """Where setup copies the local CA's certificate for the devices (the CA's key stays in
    a volume only setup mounts)."""
    copy = arg(setup_provision(services), "--tls-ca-copy")
    assert copy, "setup does not copy the CA certificate out of its folder"
    return copy


def test_the_ca_key_is_only_in_setups_volume(services: dict[str, dict[str, Any]]) -> None:
    ca_dir = arg(setup_provision(services), "--tls-ca-dir")
    assert ca_dir is not None, "setup provisions no TLS listener"
    setup_mount = mount_of(services["setup"], ca_dir)
    assert setup_mount is not None and not setup_mount.bind, "the CA is on no named volume"
    others = [
        name
        for name, svc in services.items()
        if name != "setup" and any(m.source == setup_mount.source for m in mounts(svc))
    ]
    assert others == [], f"the CA's key is readable by {others}"
    secrets_dir = arg(setup_provision(services), "--secrets")
    assert secrets_dir is not None and ca_for_devices(services).startswith(f"{secrets_dir}/")


def test_config_points_at_compose_services_and_volumes(
    services: dict[str, dict[str, Any]],
) -> None:
    problems = []
    provision_argv = setup_provision(services)
    secrets_dir = arg(provision_argv, "--secrets")
    for name in [*CLOUD_SERVICES, *AGENTS]:
        svc = services[name]
        if name in CLOUD_SERVICES:
            cfg = cloud_config(services, name)
            broker = cfg.broker
            section = getattr(cfg, CLOUD_SERVICES[name][1])
            files = list(_paths_in(section))
            if name in STORAGE_CLIENTS:
                files += [(f"storage.{k}", v) for k, v in _paths_in(cfg.storage)]
            for node in cfg.storage.nodes:
                host = node.url.split("//", 1)[1].rstrip("/")
                if host != f"{node.name}:8086" or node.name not in services:
                    problems.append(
                        f"{name}: storage node {node.name} at {node.url} is not "
                        "the compose service of that name on 8086"
                    )
        else:
            acfg = agent_config(services, name)
            broker = acfg.broker
            files = list(_paths_in(acfg))
            if acfg.device_id != name or acfg.mqtt.username != name:
                problems.append(
                    f"{name}: device_id/username {acfg.device_id}/"
                    f"{acfg.mqtt.username} differ from the service name"
                )
        # Services on the plain listener; devices on the TLS one, verifying setup's CA.
        port_flag, ca = "--port", None
        if name in AGENTS:
            port_flag = "--tls-port"
            ca = ca_for_devices(services)
        if broker.host != "mosquitto" or broker.port != int(arg(provision_argv, port_flag) or 0):
            problems.append(
                f"{name}: broker {broker.host}:{broker.port} is not mosquitto on "
                f"the port setup provisions ({port_flag})"
            )
        if broker.ca_file is not None and str(broker.ca_file) != ca:
            problems.append(f"{name}: broker.ca_file {broker.ca_file} is not setup's CA {ca}")
        if name in AGENTS and broker.ca_file is None:
            problems.append(f"{name}: a device must reach the broker over TLS (broker.ca_file)")
        if broker.topic_root != arg(provision_argv, "--topic-root"):
            problems.append(f"{name}: topic root {broker.topic_root} differs from setup's")
        for key, path in files:
            m = mount_of(svc, str(path))
            secret = key.endswith(("password_file", "sha256_file", "ca_file"))
            if secret:
                if (
                    m is None
                    or m.bind
                    or not m.read_only
                    or not secrets_dir
                    or not _under(str(path), secrets_dir)
                ):
                    problems.append(
                        f"{name}: {key} {path} is not in setup's secrets volume "
                        f"{secrets_dir}, mounted read-only"
                    )
            elif m is None:
                problems.append(f"{name}: {key} {path} is on no volume: lost with the container")
            elif m.bind or (m.read_only and not (key in FOLLOWED and name != "api")):
                # The layout is written by the API's node operations; others only follow it.
                problems.append(f"{name}: state {key} {path} is not on a writable named volume")
        if secrets_dir and not any(m.target == secrets_dir for m in mounts(svc)):
            problems.append(f"{name}: does not mount the secrets volume at {secrets_dir}")
    shared = {
        name: next((m.source for m in mounts(services[name]) if m.target == "/vigil/storage"), None)
        for name in ("api", "ingest")
    }
    if None in shared.values() or len(set(shared.values())) != 1:
        problems.append(f"api and ingest do not share the layout volume: {shared}")
    cfg = cloud_config(services, "notifier")
    if (cfg.notifier.smtp.host, cfg.notifier.smtp.port) != ("mailpit", 1025):
        problems.append("notifier: smtp is not mailpit:1025")
    if cfg.api.host in LOOPBACK:
        problems.append(f"api: host {cfg.api.host} is unreachable from outside its container")
    _fail_if(problems, "config and compose disagree")


def test_devices_agree(services: dict[str, dict[str, Any]]) -> None:
    provisioned = args(setup_provision(services), "--device")
    configured = [d.id for d in cloud_config(services, "api").devices]
    assert sorted(provisioned) == sorted(configured), (
        f"setup provisions devices {provisioned} but deploy/config/vigil.yaml lists {configured}"
    )
    missing = [a for a in AGENTS if a not in provisioned]
    assert not missing, f"agents without broker credentials: {missing}"


def test_broker_files_are_shared_through_a_named_volume(
    services: dict[str, dict[str, Any]],
) -> None:
    argv = setup_provision(services)
    broker_dir, secrets_dir = arg(argv, "--dir"), arg(argv, "--secrets")
    assert broker_dir and secrets_dir, "setup: provision needs --dir and --secrets"
    assert (arg(argv, "--host") or "127.0.0.1") not in LOOPBACK, (
        "setup: Mosquitto would listen on loopback only"
    )
    assert "--log-stderr" in argv, "setup: Mosquitto would log to a file, not `docker logs`"
    setup = services["setup"]
    for folder in (broker_dir, secrets_dir):
        m = mount_of(setup, folder)
        assert m is not None and not m.bind and m.target == folder, (
            f"setup: {folder} must be a named volume (credentials never land in the repo)"
        )
    mosq = services["mosquitto"]
    shared = mount_of(setup, broker_dir)
    mm = mount_of(mosq, broker_dir)
    assert mm is not None and shared is not None and mm.source == shared.source, (
        f"mosquitto: does not mount setup's broker volume at {broker_dir} (the generated "
        "mosquitto.conf names absolute paths)"
    )
    assert mount_of(mosq, secrets_dir) is None, "mosquitto: needs no plain-text passwords"
    cmd = command_lines(mosq)[0]
    assert arg(cmd, "-c") == f"{broker_dir}/mosquitto.conf", f"mosquitto: runs {cmd}"
    assert int(arg(argv, "--port") or 0) in container_ports(mosq, "ports"), (
        "mosquitto: the provisioned port is not published"
    )


# -- ports ----------------------------------------------------------------------------------
def _prometheus_targets() -> set[str]:
    prom = _load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    return {
        t
        for job in prom["scrape_configs"]
        for sc in job.get("static_configs", [])
        for t in sc["targets"]
    }


def test_ports_agree_with_config(services: dict[str, dict[str, Any]]) -> None:
    targets = _prometheus_targets()
    problems = []
    for name in [*CLOUD_SERVICES, *AGENTS]:
        svc = services[name]
        port = metrics_port(services, name)
        if port == 0:
            problems.append(f"{name}: metrics disabled (metrics_port 0)")
            continue
        if port not in container_ports(svc, "expose") | container_ports(svc, "ports"):
            problems.append(f"{name}: metrics port {port} is not exposed")
        if f"{name}:{port}" not in targets:
            problems.append(f"{name}: Prometheus does not scrape {name}:{port}")
        hc = healthcheck_text(svc)
        want = cloud_config(services, "api").api.port if name == "api" else port
        if not re.search(rf"(127\.0\.0\.1|localhost):{want}\b", hc):
            problems.append(f"{name}: healthcheck does not probe port {want}: {hc}")
    api_port = cloud_config(services, "api").api.port
    if api_port not in container_ports(services["api"], "ports"):
        problems.append(f"api: port {api_port} is not published")
    influx_port = cloud_config(services, "api").api.influx_port
    if influx_port not in container_ports(services["api"], "expose"):
        problems.append(f"api: the cluster endpoint's port {influx_port} is not exposed (Grafana)")
    published = [str(p) for p in services["api"].get("ports", [])]
    if f"127.0.0.1:{influx_port}:{influx_port}" not in published:
        problems.append(f"api: port {influx_port} is not published on 127.0.0.1: {published}")
    if "/health" not in healthcheck_text(services["api"]):
        problems.append("api: healthcheck does not ask /health")
    for target in targets:
        host, _, port_s = target.partition(":")
        if host == "localhost":
            continue
        if host not in services:
            problems.append(f"Prometheus scrapes {target}: no such service")
        elif int(port_s) not in container_ports(services[host], "expose"):
            problems.append(f"Prometheus scrapes {target}: port not exposed by {host}")
    _fail_if(problems, "ports disagree")


def _fields(model: Any) -> Any:
    """A settings model's field names: pydantic (cloud) or msgspec (agent)."""
    return getattr(model, "__struct_fields__", None) or model.model_fields


def test_prometheus_can_reach_the_metrics(services: dict[str, dict[str, Any]]) -> None:
    """Services bind metrics to 127.0.0.1 unless configured: unreachable from Prometheus."""
    models = (IngestSettings, AlertEngineSettings, NotifierSettings, ApiSettings, AgentConfig)
    lacking = [m.__name__ for m in models if "metrics_host" not in _fields(m)]
    if lacking:
        pytest.xfail(
            f"no metrics_host setting in {lacking}: metrics listen on 127.0.0.1 "
            "inside each container and Prometheus cannot scrape them"
        )
    problems = []
    for name in [*CLOUD_SERVICES, *AGENTS]:
        model: Any = (
            getattr(cloud_config(services, name), CLOUD_SERVICES[name][1])
            if name in CLOUD_SERVICES
            else agent_config(services, name)
        )
        if model.metrics_host in LOOPBACK:
            problems.append(
                f"{name}: metrics_host {model.metrics_host}: set 0.0.0.0 in its deploy/config file"
            )
    _fail_if(problems, "metrics unreachable from Prometheus")


def test_grafana_datasources(services: dict[str, dict[str, Any]]) -> None:
    """Prometheus, and one InfluxDB datasource: the API's cluster endpoint (the whole ring
    as one InfluxDB), with a Vigil user and the token file `setup` writes."""
    grafana = services["grafana"]
    prov = _load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "vigil.yaml")
    sources = prov["datasources"]
    mounted = [m for m in mounts(grafana) if m.target == "/etc/grafana/provisioning"]
    assert (
        mounted
        and mounted[0].bind
        and (ROOT / mounted[0].source).resolve() == (DEPLOY / "grafana" / "provisioning").resolve()
    ), "grafana: deploy/grafana/provisioning is not mounted at /etc/grafana/provisioning"
    prom = [s for s in sources if s["type"] == "prometheus"]
    assert prom and prom[0]["url"] == "http://prometheus:9090", "no Prometheus datasource"
    cfg = cloud_config(services, "api")
    influx = [s for s in sources if s["type"] == "influxdb"]
    assert [s["url"] for s in influx] == [f"http://api:{cfg.api.influx_port}"], (
        f"InfluxDB datasources {[s['url'] for s in influx]}: want only the cluster endpoint"
    )
    (source,) = influx
    assert source["jsonData"]["dbName"] == cfg.storage.database, "another database"
    password = (source.get("secureJsonData") or {}).get("password", "")
    match = re.fullmatch(r"\$__file\{(.+)\}", password)
    assert match, f"grafana {source['name']}: the token is not read from a file"
    # the read-only reader token, not the admin's
    assert source.get("user") == "reader" and PurePosixPath(match.group(1)).name == "reader.token"
    setup = command_lines(services["setup"])
    makes = [a for a in setup if a[:2] == ["vigil", "admin-token"]]
    assert makes and "--reader" in makes[0], "setup does not make the reader token"
    assert cfg.api.reader_token_sha256_file is not None
    assert (
        str(cfg.api.reader_token_sha256_file) == f"{arg(makes[0], '--secrets')}/reader.token.sha256"
    )
    written = [arg(a, "--secrets") or "" for a in makes]
    setup_mount = mount_of(services["setup"], written[0]) if written else None
    assert setup_mount is not None, "setup does not write the admin token into a volume"
    token_mount = mount_of(grafana, match.group(1))
    assert token_mount is not None and token_mount.read_only, f"grafana: {match.group(1)}"
    assert token_mount.source == setup_mount.source, "grafana reads another volume's token"
    dep = (grafana.get("depends_on") or {}).get("api") or {}
    assert dep.get("condition") == "service_healthy", "grafana: does not wait for the API"


def test_grafana_dashboards_are_provisioned_from_the_repository(
    services: dict[str, dict[str, Any]],
) -> None:
    prov = _load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "vigil.yaml")
    (provider,) = prov["providers"]
    assert provider["type"] == "file"
    path = provider["options"]["path"]
    mount = mount_of(services["grafana"], path)
    assert mount is not None and mount.bind and mount.read_only, f"grafana: {path} not mounted"
    assert host_path(services["grafana"], path) == (DEPLOY / "grafana" / "dashboards").resolve()
    assert list((DEPLOY / "grafana" / "dashboards").glob("*.json")), "no dashboard files"


def test_influxdb_requires_authentication(services: dict[str, dict[str, Any]]) -> None:
    """Every InfluxDB server: authentication on, pprof off, the unauthenticated backup RPC
    on loopback inside its container and never published; users from `influx-setup`, which
    every storage client waits for. Grafana reads through the API (test_grafana_datasources),
    not from the servers."""
    problems = []
    want = {
        "INFLUXDB_HTTP_AUTH_ENABLED": "true",
        "INFLUXDB_HTTP_PPROF_ENABLED": "false",
        "INFLUXDB_BIND_ADDRESS": "127.0.0.1:8088",
    }
    for name in INFLUX:
        env = environment(services[name])
        problems += [
            f"{name}: {k}={env.get(k)!r}, want {v!r}" for k, v in want.items() if env.get(k) != v
        ]
        problems += [
            f"{name}: {k} set in compose" for k in env if "PASSWORD" in k or k == "INFLUXDB_DB"
        ]
        if services[name].get("ports"):
            problems.append(f"{name}: publishes ports {services[name]['ports']}")
    setup = services["influx-setup"]
    argv = command_lines(setup)
    provisions = [a for a in argv if a[:4] == ["python", "-m", "storage_nodes", "provision"]]
    if not provisions:
        problems.append(f"influx-setup: runs {argv}, not `python -m storage_nodes provision`")
    else:
        cfg_path = arg(provisions[0], "--config")
        if cfg_path != "/etc/vigil/vigil.yaml" or mount_of(setup, "/etc/vigil") is None:
            problems.append(f"influx-setup: provisions from {cfg_path}, not the deploy config")
        secrets_dir = arg(provisions[0], "--secrets")
        if secrets_dir is None or mount_of(setup, secrets_dir) is None:
            problems.append("influx-setup: its --secrets folder is not a mounted volume")
    for name in STORAGE_CLIENTS:
        dep = (services[name].get("depends_on") or {}).get("influx-setup") or {}
        if dep.get("condition") != "service_completed_successfully":
            problems.append(f"{name}: does not wait for influx-setup")
    cfg = cloud_config(services, "ingest")
    if not cfg.storage.password_file or not str(cfg.storage.password_file).startswith(
        "/vigil/secrets/"
    ):
        problems.append(f"deploy config: storage.password_file {cfg.storage.password_file}")
    prov = _load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "vigil.yaml")
    problems += [
        f"grafana {s['name']}: reads InfluxDB server {s['url']} directly"
        for s in prov["datasources"]
        if s["type"] == "influxdb" and any(s["url"].startswith(f"http://{n}:") for n in INFLUX)
    ]
    _fail_if(problems, "InfluxDB open to anyone")


# -- secrets --------------------------------------------------------------------------------
SECRET_KEY = re.compile(r"pass(word|wd)?|secret|token|api[_-]?key|credential", re.I)
#: A reference to a secret file that the reader expands (Grafana's provisioning), not a value.
FILE_REFERENCE = re.compile(r"^\$__file\{/[^{}\s]+\}$")
QUOTED_SECRET = re.compile(
    r"(pass(word|wd)?|secret|token|api[_-]?key)\w*\s*[:=]\s*[\"'](?!\$__file\{)[^\"'\s]{4,}[\"']",
    re.I,
)
MQTT_PASSWORD_FLAG = re.compile(r"mosquitto_(sub|pub|rr)\b[^\n]*\s-P\s")


def _secret_values(node: Any, where: str) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            k = str(key)
            if (
                SECRET_KEY.search(k)
                and not re.search(r"_?file$", k, re.I)
                and k != "secretName"  # Kubernetes: the name of a Secret object, not a secret
                and isinstance(value, str | int | float)
                and value != ""
                and not FILE_REFERENCE.match(str(value))
            ):
                yield f"{where}.{k}"
            yield from _secret_values(value, f"{where}.{k}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            if isinstance(item, str) and "=" in item:
                k = item.split("=", 1)[0]
                if SECRET_KEY.search(k) and not re.search(r"_?file$", k, re.I):
                    yield f"{where}[{i}] {k}=..."
            yield from _secret_values(item, f"{where}[{i}]")


def test_no_secret_is_written_down() -> None:
    files = [COMPOSE_FILE, *(p for p in DEPLOY.rglob("*") if p.is_file())]
    problems = []
    for path in files:
        rel = path.relative_to(ROOT)
        if path.suffix in {".password", ".token", ".sha256"} or path.name in {"passwd", "acl"}:
            problems.append(f"{rel}: a generated credential file in the repository")
            continue
        text = path.read_text(encoding="utf-8")
        if path.suffix in {".yml", ".yaml"}:
            problems += [  # a Kubernetes manifest may hold several documents
                f"{rel}: {w} has a literal value"
                for doc in yaml.safe_load_all(text)
                for w in _secret_values(doc, rel.name)
            ]
        problems += [f"{rel}: {m.group(0)}" for m in QUOTED_SECRET.finditer(text)]
        problems += [
            f"{rel}: passes a password on a command line" for _ in MQTT_PASSWORD_FLAG.finditer(text)
        ]
    _fail_if(problems, "secrets written down")


# -- the commands setup runs ----------------------------------------------------------------
def test_broker_acl_prints_the_rendered_acl(capsys: pytest.CaptureFixture[str]) -> None:
    assert broker_main(["acl", "--topic-root", "plant"]) == 0
    assert capsys.readouterr().out == render_acl(Topics("plant"))


def test_broker_provision_writes_files_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "provision",
        "--dir",
        str(tmp_path / "b"),
        "--secrets",
        str(tmp_path / "s"),
        "--host",
        "0.0.0.0",
        "--port",
        "1884",
        "--allow-plain-remote",
        "--device",
        "dev-a",
        "--device",
        "dev-b",
        "--device",
        "dev-a",
        "--run-as",
        "root",
        "--log-stderr",
        "--plugin",
        "/usr/lib/vigil/vigil_clientid.so",
    ]
    assert broker_main(argv) == 0
    out = capsys.readouterr().out
    conf = (tmp_path / "b" / "mosquitto.conf").read_text()
    assert str((tmp_path / "b" / "mosquitto.conf").resolve()) in out
    assert "user root\n" in conf and "log_dest stderr" in conf and "listener 1884 0.0.0.0" in conf
    owners = (tmp_path / "b" / "clientids").resolve()
    assert f"plugin /usr/lib/vigil/vigil_clientid.so\nplugin_opt_owners {owners}\n" in conf
    users = {*SERVICE_ACCESS, "dev-a", "dev-b"}
    reserved = [line.split() for line in owners.read_text().splitlines() if line[:1] != "#"]
    assert sorted(reserved) == sorted([u, u] for u in users), "every user owns its own id"
    assert {p.stem for p in (tmp_path / "s").glob("*.password")} == users
    passwd = (tmp_path / "b" / "passwd").read_text()
    assert {line.split(":")[0] for line in passwd.splitlines()} == set(SERVICE_ACCESS)
    dynsec_file = (tmp_path / "b" / "dynamic-security.json").read_text()
    assert dynsec.client_names(json.loads(dynsec_file)) == ["dev-a", "dev-b"]
    pw = (tmp_path / "s" / "dev-a.password").read_text()
    assert pw.strip() not in passwd + dynsec_file, "credential files must hold hashes"
    assert stat.S_IMODE((tmp_path / "s" / "dev-a.password").stat().st_mode) == 0o600
    assert broker_main(argv) == 0
    assert (tmp_path / "s" / "dev-a.password").read_text() == pw, "password regenerated"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--device", "vigil-viewer"], "is a service user"),
        (["--device", "bad/id"], "invalid device id"),
        (["--port", "70000"], "must be 1-65535"),
        (["--topic-root", "a/#"], "invalid topic root"),
        (["--plugin", "vigil_clientid.so"], "must be absolute"),
    ],
)
def test_broker_provision_rejects_bad_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exc:
        broker_main(
            ["provision", "--dir", str(tmp_path / "b"), "--secrets", str(tmp_path / "s"), *extra]
        )
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "s").exists(), "nothing may be written on bad arguments"


def test_admin_token_command_keeps_the_token(tmp_path: Path) -> None:
    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "stack.cli", "admin-token", "--secrets", str(tmp_path / "s")],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )

    run()
    token = (tmp_path / "s" / "admin.token").read_text().strip()
    digest = (tmp_path / "s" / "admin.token.sha256").read_text().strip()
    assert digest == hashlib.sha256(token.encode()).hexdigest()
    for name in ("admin.token", "admin.token.sha256"):
        assert stat.S_IMODE((tmp_path / "s" / name).stat().st_mode) == 0o600
    assert token not in run().stdout, "the token must not be printed"
    assert (tmp_path / "s" / "admin.token").read_text().strip() == token


def test_admin_token_command_makes_the_reader_token_on_request(tmp_path: Path) -> None:
    secrets_dir = tmp_path / "s"
    cmd = [sys.executable, "-m", "stack.cli", "admin-token", "--secrets", str(secrets_dir)]
    subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True)
    assert not (secrets_dir / "reader.token").exists()
    done = subprocess.run(
        [*cmd, "--reader"], capture_output=True, text=True, timeout=30, check=True
    )
    reader = (secrets_dir / "reader.token").read_text().strip()
    admin = (secrets_dir / "admin.token").read_text().strip()
    assert reader != admin and reader not in done.stdout
    digest = (secrets_dir / "reader.token.sha256").read_text().strip()
    assert digest == hashlib.sha256(reader.encode()).hexdigest()
    assert stat.S_IMODE((secrets_dir / "reader.token").stat().st_mode) == 0o600
