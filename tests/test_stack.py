"""`vigil run` (what `make run` starts): the whole stack as a user meets it, on free ports,
driven the way the README says: watch with mosquitto_sub, publish with mosquitto_pub, query
through the API, find the alert email in the mail folder; then Ctrl-C leaves no process, and a
second run reuses the data and the credentials."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from support import wait_until

from stack.process import free_port
from storage_nodes import HashRing

ROOT = Path(__file__).resolve().parent.parent


def start_stack(workdir: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    log = open(workdir / "vigil-run.log", "ab")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [sys.executable, "-m", "stack.cli", "run"],
        cwd=workdir,
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def stack_env(
    broker_port: int,
    api_port: int,
    smtp_port: int,
    influx: list[int],
    *,
    scheme: str = "http",
    **agent: str,
) -> dict[str, str]:
    """The environment that puts `vigil run` on these ports (metrics on free ones), the
    storage servers on ``scheme``; ``agent``: more agent settings (``interval_s="0.2"`` is
    VIGIL_AGENT__INTERVAL_S=0.2)."""
    tls_port = free_port()  # the agents connect over TLS, as config/agents says
    nodes = ", ".join(
        f"{{name: influx-{i + 1}, url: '{scheme}://127.0.0.1:{p}'}}" for i, p in enumerate(influx)
    )
    return {
        "VIGIL__BROKER__PORT": str(broker_port),
        "VIGIL__BROKER__TLS__PORT": str(tls_port),
        "VIGIL__API__PORT": str(api_port),
        "VIGIL__NOTIFIER__SMTP__PORT": str(smtp_port),
        "VIGIL__STORAGE__NODES": f"[{nodes}]",
        "VIGIL__PROMETHEUS__PORT": str(free_port()),
        **{
            f"VIGIL__{s}__METRICS_PORT": str(free_port())
            for s in ("INGEST", "ALERT_ENGINE", "NOTIFIER", "API")
        },
        "VIGIL_AGENT__BROKER__PORT": str(tls_port),
        "VIGIL_AGENT__METRICS_PORT": "0",
        **{f"VIGIL_AGENT__{k.upper()}": v for k, v in {"interval_s": "0.5", **agent}.items()},
    }


def wait_stack_json(workdir: Path) -> dict[str, Any]:
    """stack.json of the stack started in ``workdir``, once `vigil run` wrote it."""
    stack_json = workdir / ".vigil" / "stack.json"
    wait_until(
        lambda: stack_json.exists() and stack_json.stat().st_size > 0,
        timeout=90,
        what=f"stack.json; log:\n{(workdir / 'vigil-run.log').read_text()}",
    )
    info: dict[str, Any] = json.loads(stack_json.read_text())
    return info


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        return (
            "zombie"
            not in Path(f"/proc/{pid}/status").read_text().lower().split("state:")[1].split("\n")[0]
        )
    except (OSError, IndexError):
        return False


def stop_stack(proc: subprocess.Popen[bytes], pids: list[int]) -> None:
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    assert proc.wait(60) == 0
    wait_until(
        lambda: not any(alive(p) for p in pids),
        timeout=20,
        what="every process of the stack to exit",
    )


@pytest.mark.integration
def test_make_run_stack_as_the_readme_describes(tmp_path):
    shutil.copytree(ROOT / "config", tmp_path / "config")
    broker_port, api_port, smtp_port = free_port(), free_port(), free_port()
    influx = [free_port() for _ in range(3)]
    env = stack_env(broker_port, api_port, smtp_port, influx)
    proc = start_stack(tmp_path, env)
    stack_json = tmp_path / ".vigil" / "stack.json"
    try:
        info = wait_stack_json(tmp_path)
        b, api = info["broker"], info["api"]
        assert b["port"] == broker_port and api["url"] == f"http://127.0.0.1:{api_port}"
        assert info["console"]["url"] == f"{api['url']}/console/"  # the web console, public
        assert requests.get(info["console"]["url"], timeout=10).headers["Content-Security-Policy"]
        assert sorted(info["influxdb"]["servers"]) == ["influx-1", "influx-2", "influx-3"]
        mail = Path(info["mail_folder"])
        view = ["-h", "127.0.0.1", "-p", str(broker_port), "-u", b["username"], "-P", b["password"]]

        # Watch readings and status with mosquitto_sub.
        out = subprocess.run(
            ["mosquitto_sub", *view, "-t", "vigil/data/#", "-v", "-C", "3", "-W", "30"],
            capture_output=True,
            text=True,
            timeout=40,
        )
        assert out.returncode == 0 and out.stdout.count("vigil/data/demo-") == 3, out
        status = subprocess.run(
            ["mosquitto_sub", *view, "-t", "vigil/status/demo-1", "-C", "1", "-W", "10"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert json.loads(status.stdout)["state"] == "online"

        # A rule, then a reading of one's own above it, with mosquitto_pub.
        auth = {"Authorization": f"Bearer {api['admin_token']}"}
        rule = {
            "id": "too-hot",
            "metric": "temperature",
            "device": "my-device",
            "op": "above",
            "threshold": 30,
            "severity": "critical",
        }
        created = requests.post(f"{api['url']}/rules", json=rule, headers=auth, timeout=10)
        assert created.status_code == 201, created.text
        wait_until(
            lambda: "1 rule(s)" in (tmp_path / ".vigil/logs/alert-engine.log").read_text(),
            what="the rule to reach the alert engine",
        )
        password = (tmp_path / ".vigil/secrets/my-device.password").read_text().strip()
        now = int(time.time() * 1000)
        body = {
            "id": 1,
            "device": "my-device",
            "ts": now,
            "kind": "sensor",
            "metric": "temperature",
            "value": 35.0,
            "unit": "C",
        }
        subprocess.run(
            [
                "mosquitto_pub",
                "-h",
                "127.0.0.1",
                "-p",
                str(broker_port),
                "-u",
                "my-device",
                "-i",
                "my-device",
                "-P",
                password,
                "-q",
                "1",
                "-t",
                "vigil/data/my-device",
                "-m",
                json.dumps(body),
            ],
            check=True,
            timeout=10,
        )

        # Query it through the API; find the alert email in the mail folder.
        latest = f"{api['url']}/devices/my-device/metrics/temperature/latest"
        wait_until(
            lambda: requests.get(latest, headers=auth, timeout=5).status_code == 200,
            what="the reading through the API",
        )
        assert requests.get(latest, headers=auth, timeout=5).json()["value"] == 35.0

        # InfluxDB: the read-only user of stack.json reads with the `influx` CLI; anonymous
        # access and writes by that user are refused.
        influx = info["influxdb"]
        port = influx["servers"]["influx-1"].rsplit(":", 1)[1]
        cli = ["influx", "-host", "127.0.0.1", "-port", port, "-database", "vigil"]
        who = ["-username", influx["username"], "-password", influx["password"]]
        shown = subprocess.run(
            [*cli, *who, "-execute", "SHOW MEASUREMENTS"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert shown.returncode == 0 and "temperature" in shown.stdout, shown
        anonymous = subprocess.run(
            [*cli, "-execute", "SHOW MEASUREMENTS"], capture_output=True, text=True, timeout=20
        )
        assert (
            "temperature" not in anonymous.stdout and "auth" in anonymous.stdout + anonymous.stderr
        )
        forged = subprocess.run(
            [*cli, *who, "-execute", "INSERT temperature,device=my-device value=99"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert "not authorized" in forged.stdout + forged.stderr, forged

        # The whole cluster as one InfluxDB (influxdb.cluster_url), with the admin token:
        # every device with a temperature series on any server, each once.
        on_servers: set[str] = set()
        for url in influx["servers"].values():
            direct = subprocess.run(
                ["influx", "-host", "127.0.0.1", "-port", url.rsplit(":", 1)[1], "-database",
                 "vigil", *who, "-format", "json", "-execute",
                 'SHOW TAG VALUES FROM temperature WITH KEY = "device"'],
                capture_output=True, text=True, timeout=20, check=True,
            )  # fmt: skip
            for series in json.loads(direct.stdout)["results"][0].get("series", []):
                on_servers.update(v[1] for v in series["values"])
        whole = subprocess.run(
            ["influx", "-host", "127.0.0.1", "-port", influx["cluster_url"].rsplit(":", 1)[1],
             "-database", "vigil", "-username", "admin", "-password", api["admin_token"],
             "-format", "json", "-execute", "SELECT last(value) FROM temperature GROUP BY device"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        series = json.loads(whole.stdout)["results"][0]["series"]
        devices = [s["tags"]["device"] for s in series]
        assert "my-device" in devices and sorted(devices) == sorted(on_servers) == devices
        wait_until(lambda: list(mail.glob("*.eml")), what="the alert email")
        email = next(mail.glob("*.eml")).read_text()
        assert "too-hot" in email and "my-device" in email

        pids = list(info["pids"].values())
        # broker, 3 InfluxDB, mail sink, 2 ingest members, 3 other services, 3 agents,
        # Prometheus
        assert len(pids) == 14

        # Prometheus scrapes every service (the agents here serve no metrics), with the
        # pipeline's rules loaded.
        prom = info["prometheus"]["url"]

        def targets() -> list[dict[str, Any]] | None:
            active = requests.get(f"{prom}/api/v1/targets", timeout=5).json()["data"]
            found = active["activeTargets"]
            return found if len(found) == 5 and all(t["health"] == "up" for t in found) else None

        up = wait_until(targets, 30, what="every target up")
        assert {t["labels"]["process"] for t in up} == {
            "ingest-1", "ingest-2", "alert_engine", "notifier", "api",
        }  # fmt: skip
        groups = requests.get(f"{prom}/api/v1/rules", timeout=5).json()["data"]["groups"]
        assert {g["name"] for g in groups} == {"vigil-recording", "vigil-alerts"}

        # The live terminal: a status line every few seconds, readings flowing, every server up.
        status = re.compile(r"\d\d:\d\d:\d\d  in \d+\.\d/s  stored \d+\.\d/s  .*servers 3/3")
        wait_until(
            lambda: status.search((tmp_path / "vigil-run.log").read_text()),
            30,
            what="a status line",
        )
        assert {"ingest-1", "ingest-2"} <= set(info["pids"]) and "ingest" not in info["pids"]

        # A child killed outright is restarted, and stack.json names its new pid.
        os.kill(info["pids"]["notifier"], signal.SIGKILL)
        restarted = wait_until(
            lambda: (
                (now_pids := json.loads(stack_json.read_text())["pids"])["notifier"]
                != info["pids"]["notifier"]
                and now_pids
            ),
            timeout=60,
            what="the notifier's new pid in stack.json",
        )
        assert alive(restarted["notifier"])
        assert {k: v for k, v in restarted.items() if k != "notifier"} == {
            k: v for k, v in info["pids"].items() if k != "notifier"
        }

        # An InfluxDB server that comes back empty gets its users and database again: the
        # launcher provisions it at every start (read with the read-only user afterwards).
        # The one that holds no copy of my-device's temperature, which is read again below
        # (repairing a replica's data is not the launcher's job).
        ring = HashRing(sorted(influx["servers"]), 256, 2)
        empty = next(n for n in ring.nodes if n not in ring.replicas("my-device/temperature"))
        os.kill(restarted[empty], signal.SIGKILL)
        wait_until(lambda: not alive(restarted[empty]), 10, what=f"{empty} to die")
        for part in ("meta", "data", "wal"):
            shutil.rmtree(tmp_path / ".vigil" / "influx" / empty / part, ignore_errors=True)
        restarted = wait_until(
            lambda: (
                (now_pids := json.loads(stack_json.read_text())["pids"])[empty] != restarted[empty]
                and now_pids
            ),
            timeout=60,
            what=f"{empty}'s new pid in stack.json",
        )
        port = influx["servers"][empty].rsplit(":", 1)[1]
        cli = ["influx", "-host", "127.0.0.1", "-port", port, "-database", "vigil"]
        shown = subprocess.run(
            [*cli, *who, "-execute", "SHOW DATABASES"], capture_output=True, text=True, timeout=20
        )
        assert shown.returncode == 0 and "vigil" in shown.stdout.split(), shown
        pids = list(restarted.values())
    except BaseException:
        proc.kill()
        print((tmp_path / "vigil-run.log").read_text())
        raise
    stop_stack(proc, pids)

    # Again: same credentials, same data.
    proc = start_stack(tmp_path, env)
    try:
        wait_until(
            lambda: stack_json.exists() and json.loads(stack_json.read_text())["pids"] != restarted,
            timeout=90,
            what="the second start",
        )
        again = json.loads(stack_json.read_text())
        assert again["broker"]["password"] == b["password"]
        assert again["api"]["admin_token"] == api["admin_token"]
        resp = requests.get(latest, headers=auth, timeout=5)
        assert resp.status_code == 200 and resp.json()["value"] == 35.0
    except BaseException:
        proc.kill()
        print((tmp_path / "vigil-run.log").read_text())
        raise
    stop_stack(proc, list(again["pids"].values()))


@pytest.mark.integration
def test_make_run_with_tls_everywhere(tmp_path):
    """`vigil run` with the storage servers on https and the API behind TLS, by config: the
    certificates come from the local CA, every client verifies them, the Done-when query
    runs over TLS with the `influx` CLI, and the CLI finds the CA in stack.json."""
    shutil.copytree(ROOT / "config", tmp_path / "config")
    broker_port, api_port, smtp_port = free_port(), free_port(), free_port()
    env = {
        **stack_env(broker_port, api_port, smtp_port, [free_port() for _ in range(3)],
                    scheme="https"),
        "VIGIL__STORAGE__CA_FILE": ".vigil/tls/ca.crt",
        "VIGIL__API__TLS_CERT_FILE": ".vigil/tls/api.crt",
        "VIGIL__API__TLS_KEY_FILE": ".vigil/tls/api.key",
        "VIGIL__PROMETHEUS__ENABLED": "false",
    }  # fmt: skip
    proc = start_stack(tmp_path, env)
    try:
        info = wait_stack_json(tmp_path)
        ca = str(tmp_path / ".vigil" / "tls" / "ca.crt")
        api, influx = info["api"], info["influxdb"]
        assert api["url"] == f"https://127.0.0.1:{api_port}" and api["ca_file"] == ca
        assert info["console"]["url"].startswith("https://")
        assert influx["cluster_url"].startswith("https://")
        assert all(url.startswith("https://") for url in influx["servers"].values())
        assert info["broker"]["ca_file"] == ca
        wait_until(
            lambda: requests.get(f"{api['url']}/health", verify=ca, timeout=5).ok,
            timeout=60,
            what="the API over https",
        )
        # The CLI verifies the API against the CA stack.json names.
        listed = subprocess.run(
            [sys.executable, "-m", "stack.cli", "devices", "list"],
            cwd=tmp_path, capture_output=True, text=True, timeout=30,
            env={k: v for k, v in os.environ.items() if k != "VIGIL_CA_FILE"},
        )  # fmt: skip
        assert listed.returncode == 0 and "demo-1" in listed.stdout, listed

        # The Done-when query over TLS, verified (the influx CLI is Go: SSL_CERT_FILE).
        def whole() -> list[str] | None:
            done = subprocess.run(  # a transient failure is retried by wait_until
                ["influx", "-ssl", "-host", "127.0.0.1", "-port",
                 influx["cluster_url"].rsplit(":", 1)[1], "-database", "vigil",
                 "-username", "admin", "-password", api["admin_token"], "-format", "json",
                 "-execute", "SELECT last(value) FROM temperature GROUP BY device"],
                capture_output=True, text=True, timeout=30, check=False,
                env={**os.environ, "SSL_CERT_FILE": ca},
            )  # fmt: skip
            if done.returncode != 0:
                return None
            series = json.loads(done.stdout)["results"][0].get("series", [])
            devices = sorted(s["tags"]["device"] for s in series)
            return devices if {"demo-1", "demo-2", "demo-3"} <= set(devices) else None

        assert wait_until(whole, timeout=90, what="every demo device over the TLS endpoint")
        # Each server: https only, and no anonymous query.
        for url in influx["servers"].values():
            refused = requests.get(
                f"{url}/query", params={"q": "SHOW DATABASES"}, verify=ca, timeout=10
            )
            assert refused.status_code == 401
            plain = requests.get(url.replace("https:", "http:") + "/ping", timeout=5)
            assert plain.status_code == 400 and "HTTPS server" in plain.text
        pids = list(info["pids"].values())
    except BaseException:
        proc.kill()
        print((tmp_path / "vigil-run.log").read_text())
        for log in sorted((tmp_path / ".vigil" / "logs").glob("*.log")):
            print(f"----- {log.name}\n{log.read_text()[-3000:]}")
        raise
    stop_stack(proc, pids)
