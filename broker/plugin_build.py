"""Compiles Vigil's Mosquitto plugin (``broker/plugin/vigil_clientid.c``) into a cache.

The shared object is named after a hash of the source and the compiler flags, in
``build/mosquitto/`` at the repository root: built once, reused by every later provision
(and every test), rebuilt when the source changes. It is compiled to a temporary name and
renamed, so a broker starting at the same time never loads half a file.

A missing compiler or header raises :class:`PluginBuildError` naming the Debian package to
install (``scripts/bootstrap`` installs them for ``make run`` and ``make test``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_SOURCE = Path(__file__).resolve().parent / "plugin" / "vigil_clientid.c"
BUILD_DIR = ROOT / "build" / "mosquitto"
CC = "cc"
CFLAGS: tuple[str, ...] = ("-shared", "-fPIC", "-O2", "-Wall", "-Wextra")
#: the Debian package of the compiler
COMPILER_PACKAGE = "gcc"
#: header the plugin includes -> the Debian package that ships it
HEADERS: Mapping[str, str] = {
    "stdio.h": "libc6-dev",  # only recommended by gcc: --no-install-recommends leaves it out
    "mosquitto_broker.h": "mosquitto-dev",
    "mosquitto_plugin.h": "mosquitto-dev",
    "mosquitto.h": "libmosquitto-dev",
}


class PluginBuildError(Exception):
    """The plugin cannot be built here; ``package`` is what to install, if that is why."""

    def __init__(self, message: str, package: str | None = None) -> None:
        super().__init__(message)
        self.package = package


def plugin_name(source: bytes, flags: Sequence[str] = CFLAGS) -> str:
    """The cache file name of a build of ``source`` with ``flags``."""
    digest = hashlib.sha256(source + b"\0" + " ".join(flags).encode()).hexdigest()
    return f"vigil_clientid-{digest[:16]}.so"


def check_toolchain(cc: str = CC, headers: Mapping[str, str] | None = None) -> str:
    """The compiler's path, once it and every header (default :data:`HEADERS`) are found;
    else PluginBuildError naming the package to install."""
    path = shutil.which(cc)
    if path is None:
        raise PluginBuildError(
            f"C compiler {cc!r} not found (needed to build the Mosquitto plugin): "
            f"install the Debian package '{COMPILER_PACKAGE}'",
            COMPILER_PACKAGE,
        )
    for header, package in (HEADERS if headers is None else headers).items():
        probe = subprocess.run(
            [path, "-E", "-x", "c", "-o", os.devnull, "-"],
            input=f"#include <{header}>\n".encode(),
            capture_output=True,
            check=False,
        )
        if probe.returncode != 0:
            raise PluginBuildError(
                f"header {header} not found (needed to build the Mosquitto plugin): "
                f"install the Debian package '{package}'",
                package,
            )
    return path


def build_plugin(
    source: Path | None = None,
    cache_dir: Path | None = None,
    *,
    cc: str | None = None,
    flags: Sequence[str] = CFLAGS,
) -> Path:
    """The path of the compiled plugin (default :data:`PLUGIN_SOURCE`), building it into
    ``cache_dir`` (default :data:`BUILD_DIR`) with ``cc`` (default :data:`CC`) if it is not
    there yet."""
    source = PLUGIN_SOURCE if source is None else source
    cache_dir = BUILD_DIR if cache_dir is None else cache_dir
    try:
        code = source.read_bytes()
    except OSError as exc:
        raise PluginBuildError(f"plugin source {source}: {exc.strerror}") from exc
    target = cache_dir / plugin_name(code, flags)
    if target.is_file():
        return target
    compiler = check_toolchain(CC if cc is None else cc)
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        result = subprocess.run(
            [compiler, *flags, "-o", tmp, "-x", "c", "-"],
            input=code,
            capture_output=True,
            check=False,
        )
        if result.returncode != 0:
            detail = result.stderr.decode(errors="replace").strip()
            raise PluginBuildError(f"compiling {source} failed:\n{detail}")
        os.chmod(tmp, 0o755)  # noqa: S103 - a shared object the broker (another user) loads
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return target
