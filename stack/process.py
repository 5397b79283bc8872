"""Child processes for the local stack and the test fixtures: start with a log file, wait
until a port answers, stop with SIGTERM then SIGKILL, and never outlive the parent (Linux
parent-death signal)."""

from __future__ import annotations

import collections
import ctypes
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


#: Ports this process handed out lately: the kernel may offer a just-released port again,
#: and two servers configured on one port refuse to start (or a config is refused).
_handed_out: collections.deque[int] = collections.deque(maxlen=4096)


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out by itself (to ``bind(0)`` and outgoing connects)."""
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now on ``host``, and not one this process handed out lately.

    It is drawn from below the kernel's ephemeral range: a port the kernel picked for
    ``bind(0)`` can be taken again by any outgoing connection (to a broker, a server) between
    this call and the server's bind, and the server then fails with "Address already in use".
    Ports below the range are only ever taken by someone binding them on purpose.
    """
    low = max(_ephemeral_low(), 2048)
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(max(1024, low - 20000), low)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _handed_out.append(port)
        return port
    while True:  # the range below is crowded: fall back to one the kernel picks
        with socket.socket() as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.append(port)
            return port


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class ManagedProcess:
    def __init__(
        self,
        name: str,
        cmd: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.cmd = list(cmd)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                self.cmd,
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=None if self.env is None else {**os.environ, **self.env},
                cwd=self.cwd,
                start_new_session=True,  # Ctrl-C reaches the parent, which stops us in order
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - prctl only, no locks
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_port(self, host: str, port: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(
                    f"{self.name} exited ({self.returncode()}) before "
                    f"listening on {host}:{port}:\n{self.log_tail()}"
                )
            if port_open(host, port):
                return
            time.sleep(0.05)
        raise TimeoutError(
            f"{self.name} not listening on {host}:{port} after {timeout:g}s:\n{self.log_tail()}"
        )

    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, as in a crash."""
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout: float = 10.0) -> None:
        if not self.alive():
            return
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n:])
