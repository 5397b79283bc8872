"""The command-line prologue every service shares.

``--config PATH`` and ``--validate-config``; a bad file is reported on stderr as
``<file>: <key>: <reason>`` with exit status 2, a good one with ``ok`` (status 0) when only
validating. Secret files named by the configuration are checked too: a configuration that
names an unreadable or empty password file is not valid. :func:`load_service_config` is the
whole check of one cloud service.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from vigil.config_core import ConfigError, SecretFile, secret_problem

if TYPE_CHECKING:
    from vigil.settings import VigilConfig

DEFAULT_CONFIG = "config/vigil.yaml"
T = TypeVar("T")


def service_parser(
    prog: str, description: str, default_config: str = DEFAULT_CONFIG
) -> argparse.ArgumentParser:
    """``description``: a docstring or text; its first paragraph is used."""
    first = " ".join((description or "").strip().split("\n\n")[0].split())
    ap = argparse.ArgumentParser(prog=prog, description=first)
    ap.add_argument(
        "--config", default=default_config, help=f"configuration file (default {default_config})"
    )
    ap.add_argument(
        "--validate-config",
        action="store_true",
        help="check the configuration, print ok or the error, and exit",
    )
    ap.add_argument(
        "--ready-file",
        type=Path,
        default=None,
        help="write readiness here (JSON, atomically): what a launcher waits on",
    )
    return ap


def check_secret_files(path: str, files: Iterable[SecretFile]) -> None:
    """Raise ConfigError naming the key of the first secret file that cannot be used:
    unreadable, not UTF-8, empty, or (a digest file) not 64 hex characters."""
    for secret in files:
        problem = secret_problem(secret)
        if problem is not None:
            raise ConfigError(path, secret.key, problem)


def load_service_config(path: str, service: str) -> VigilConfig:
    """``path`` validated for the cloud service ``service`` (its section name: ``ingest``,
    ``alert_engine``, ``notifier`` or ``api``), the secret files it reads included: what its
    ``--validate-config`` checks, and what ``vigil validate-config`` checks for it."""
    # Here, not at the top: the agent shares this module and never loads pydantic.
    from vigil.settings import load_config, service_secret_files  # noqa: PLC0415

    config = load_config(path)
    check_secret_files(path, service_secret_files(config, service))
    return config


def load_or_exit(args: argparse.Namespace, load: Callable[[str], T]) -> T | int:
    """The configuration, or the exit status to return: 2 for a bad file (reported on
    stderr), 0 after ``--validate-config`` printed ``ok``."""
    try:
        config = load(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.validate_config:
        print("ok")
        return 0
    return config
