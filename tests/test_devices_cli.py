"""``vigil devices`` over HTTP against a real API process (and a real Mosquitto): add a
device and connect with the password it wrote, list, set and clear a live configuration,
disable and remove; errors are one line with the API's detail."""

from __future__ import annotations

import json
import stat
import urllib.request

import pytest
from support import NOT_AUTHORIZED, connack, wait_until

from stack.devices_cli import main as devices_main

pytestmark = pytest.mark.integration


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def test_devices_cli_manages_a_device_through_the_api(
    cloud_config, broker, run_service, tmp_path, capsys
):
    api = cloud_config.config.api
    url = f"http://{api.host}:{api.port}"
    run_service("api", "--config", str(cloud_config.path))
    wait_until(lambda: _healthy(url), 30, what="the API answering")
    base = ["--api", url, "--token", cloud_config.admin_token]

    def vigil(*args: str) -> tuple[int, str, str]:
        code = devices_main([*base, *args])
        out = capsys.readouterr()
        return code, out.out, out.err

    pw_file = tmp_path / "cli-dev.password"
    code, out, _ = vigil(
        "add", "cli-dev", "--description", "from the CLI", "--password-file", str(pw_file)
    )
    assert code == 0 and "added cli-dev" in out and str(pw_file) in out
    assert stat.S_IMODE(pw_file.stat().st_mode) == 0o600
    password = pw_file.read_text().strip()
    assert password not in out, "the password went to the file, not the terminal"
    assert connack(broker, "cli-dev", "cli-dev", password=password)[0] == 0

    code, out, _ = vigil("list")
    line = next(x for x in out.splitlines() if x.startswith("cli-dev "))
    assert code == 0 and " api " in line and "from the CLI" in line

    code, out, _ = vigil("config", "cli-dev", "--interval", "2.5", "--tickers", "AAPL,MSFT")
    assert code == 0 and "live configuration version" in out and "published" in out
    code, out, _ = vigil("--json", "config", "cli-dev", "--show")
    shown = json.loads(out)
    assert shown["config"] == {"interval_s": 2.5, "tickers": ["AAPL", "MSFT"]}
    code, out, err = vigil("config", "cli-dev", "--interval", "-1")
    assert code == 1 and "400" in err and "interval_s" in err and len(err.strip().splitlines()) == 1
    code, out, _ = vigil("config", "cli-dev", "--clear")
    assert code == 0 and "removed" in out

    assert vigil("disable", "cli-dev")[0] == 0
    assert connack(broker, "cli-dev", "cli-dev", password=password)[0] == NOT_AUTHORIZED
    assert vigil("enable", "cli-dev")[0] == 0
    assert vigil("remove", "cli-dev")[0] == 0
    assert connack(broker, "cli-dev", "cli-dev", password=password)[0] == NOT_AUTHORIZED
    code, _, err = vigil("remove", "cli-dev")
    assert code == 1 and "404" in err and "cli-dev" in err


def test_devices_cli_says_where_to_find_the_api(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("VIGIL_API_URL", raising=False)
    monkeypatch.delenv("VIGIL_API_TOKEN", raising=False)
    assert devices_main(["--state", str(tmp_path), "list"]) == 1
    err = capsys.readouterr().err
    assert "give --api and --token" in err and "stack.json" in err
    code = devices_main(["--api", "http://127.0.0.1:9", "--token", "t", "list"])
    assert code == 1 and "cannot reach the API" in capsys.readouterr().err
