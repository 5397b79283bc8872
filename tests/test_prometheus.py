"""The pipeline's Prometheus rules: `promtool check rules` and the alerts' unit tests
(deploy/prometheus/rules_test.yml) pass, and the configuration `vigil run` generates passes
`promtool check config` and scrapes every process on its port."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from stack import prometheus

RULES = prometheus.RULES


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], capture_output=True, text=True, timeout=60, cwd=RULES.parent
    )


def test_the_rules_are_valid_and_their_alerts_fire_as_tested():
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0 and "SUCCESS: 16 rules found" in checked.stdout, checked
    tested = promtool("test", "rules", "rules_test.yml")
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"]
              for r in g["rules"] if "alert" in r}  # fmt: skip
    assert alerts >= {
        "VigilIngestLagHigh", "VigilIngestBacklogGrowing", "VigilDeadLettersRising",
        "VigilStorageServerDown", "VigilHintQueueGrowing", "VigilRepairFailing",
        "VigilNotifierFailing", "VigilAgentOutboxGrowing",
    }  # fmt: skip


def test_the_generated_configuration_scrapes_each_process(tmp_path: Path):
    text = prometheus.config_text(
        {"ingest-1": ("127.0.0.1", 9101), "api": ("127.0.0.1", 9104), "agent-x": ("h", 0)},
        RULES,
        5,
    )
    path = tmp_path / "prometheus.yml"
    path.write_text(text)
    checked = promtool("check", "config", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    job = yaml.safe_load(text)["scrape_configs"][0]
    assert [(c["targets"], c["labels"]) for c in job["static_configs"]] == [
        (["127.0.0.1:9104"], {"process": "api"}),
        (["127.0.0.1:9101"], {"process": "ingest-1"}),
    ]  # a port 0 (no metrics) is left out


def test_the_compose_configuration_is_valid_with_the_same_rules(tmp_path: Path):
    compose = yaml.safe_load((RULES.parent / "prometheus.yml").read_text())
    assert compose["rule_files"] == ["/etc/prometheus/rules.yml"]  # mounted from rules.yml
    compose["rule_files"] = [str(RULES)]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(compose))
    checked = promtool("check", "config", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
