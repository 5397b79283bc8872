"""The Prometheus of ``make run``: Debian's ``prometheus`` scraping every process of the
stack on its metrics port, with the pipeline's recording and alert rules
(``deploy/prometheus/rules.yml``). The configuration is generated from the stack's own
(pure: :func:`config_text`), so it names exactly the ports the processes serve."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

import yaml

RULES = Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "rules.yml"


def binary() -> str | None:
    """The prometheus executable, if installed (the bootstrap installs Debian's)."""
    return shutil.which("prometheus")


def config_text(
    targets: Mapping[str, tuple[str, int]], rules: Path, scrape_interval_s: float
) -> str:
    """prometheus.yml: one job per process (``name: (host, port)``), labelled with the
    process's name, and the rules."""
    interval = f"{max(1, round(scrape_interval_s))}s"
    doc = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {
                "job_name": "vigil",
                "static_configs": [
                    {"targets": [f"{host}:{port}"], "labels": {"process": name}}
                    for name, (host, port) in sorted(targets.items())
                    if port
                ],
            }
        ],
    }
    return yaml.safe_dump(doc, sort_keys=False)


def command(exe: str, config: Path, data: Path, host: str, port: int) -> list[str]:
    return [
        exe,
        f"--config.file={config}",
        f"--storage.tsdb.path={data}",
        f"--web.listen-address={host}:{port}",
        "--storage.tsdb.retention.time=7d",
        "--log.level=warn",
    ]
