"""Which keys did the code under test touch? ``MONITOR`` on a private server says.

``KeyAudit`` records every command the server executes - including the ones
Lua scripts run (``[0 lua]`` lines) - and extracts the keys each one names. Run
it on a server only the code under test talks to: every key it read or wrote,
and every ``SCAN``/``KEYS`` pattern it used, is in ``keys`` / ``patterns``.
"""

from __future__ import annotations

import re
import socket
import threading
import time
import uuid
from types import TracebackType

ARG = re.compile(r'"((?:[^"\\]|\\.)*)"')
ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|.)")
_SIMPLE_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "a": "\a", "b": "\b"}

NO_KEYS = frozenset(
    {
        "AUTH", "CLIENT", "COMMAND", "ECHO", "HELLO", "INFO", "PING", "READONLY",
        "SCRIPT", "SELECT", "TIME", "MULTI", "EXEC", "DISCARD", "RESET", "QUIT",
    }
)  # fmt: skip
ALL_KEYS = frozenset({"DEL", "EXISTS", "MGET", "TOUCH", "UNLINK", "WATCH"})
SCRIPTS = frozenset({"EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO"})


def _unescape(text: str) -> bytes:
    def one(match: re.Match[str]) -> str:
        code = match.group(1)
        if code.startswith(("x", "X")) and len(code) == 3:
            return chr(int(code[1:], 16))
        return _SIMPLE_ESCAPES.get(code, code)

    return ESCAPE.sub(one, text).encode("latin-1")


def parse_line(line: str) -> list[str]:
    """``+1700000000.1 [0 127.0.0.1:5] "SET" "k" "v"`` -> ``["SET", "k", "v"]``."""
    return [_unescape(arg).decode("utf-8", "replace") for arg in ARG.findall(line)]


def command_keys(argv: list[str]) -> tuple[list[str], list[str]]:
    """The keys and the ``SCAN``/``KEYS`` patterns one command names."""
    name, args = (argv[0].upper(), argv[1:]) if argv else ("", [])
    if not name or name in NO_KEYS:
        return [], []
    if name in SCRIPTS:
        count = int(args[1])
        return args[2 : 2 + count], []
    if name == "KEYS":
        return [], args[:1]
    if name == "SCAN":
        upper = [arg.upper() for arg in args]
        match = args[upper.index("MATCH") + 1] if "MATCH" in upper else "*"
        return [], [match]
    if name in ALL_KEYS:
        return args, []
    return args[:1], []


class KeyAudit:
    """``with KeyAudit(port) as audit: ...`` then read ``audit.keys``."""

    def __init__(self, port: int, *, password: str | None = None) -> None:
        self.port = port
        self.password = password
        self.commands: list[list[str]] = []
        self._sock: socket.socket | None = None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._buffer = b""

    def __enter__(self) -> KeyAudit:
        self._sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        if self.password is not None:
            self._sock.sendall(_command("AUTH", self.password))
            assert self._readline().startswith(b"+OK")
        self._sock.sendall(_command("MONITOR"))
        assert self._readline().startswith(b"+OK")
        self._sock.settimeout(None)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def sync(self, timeout: float = 5.0) -> None:
        """Wait until every command sent before this call has been recorded."""
        marker = f"audit-sync-{uuid.uuid4().hex}"
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            if self.password is not None:
                sock.sendall(_command("AUTH", self.password))
            sock.sendall(_command("ECHO", marker))
            deadline = time.monotonic() + timeout
            while not any(marker in argv for argv in self.commands[-50:]):
                if time.monotonic() > deadline:
                    raise TimeoutError("MONITOR did not catch up")
                time.sleep(0.01)

    def close(self) -> None:
        if self._sock is not None:
            self.sync()
            self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
            self._thread.join(5)
            self._sock = None

    def _readline(self) -> bytes:
        assert self._sock is not None
        while b"\r\n" not in self._buffer:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ConnectionError("MONITOR connection closed")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\r\n")
        return line

    def _read(self) -> None:
        while True:
            try:
                line = self._readline()
            except OSError:
                return
            self.commands.append(parse_line(line.decode("latin-1")))

    @property
    def keys(self) -> set[str]:
        """Every key named so far (waits until MONITOR caught up)."""
        if self._sock is not None:
            self.sync()
        return {key for argv in self.commands for key in command_keys(argv)[0]}

    @property
    def patterns(self) -> set[str]:
        if self._sock is not None:
            self.sync()
        return {pattern for argv in self.commands for pattern in command_keys(argv)[1]}

    def outside(self, prefix: str) -> set[str]:
        """Keys and patterns that are not under ``<prefix>:``."""
        return {key for key in self.keys | self.patterns if not key.startswith(f"{prefix}:")}


def _command(*args: str) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)
