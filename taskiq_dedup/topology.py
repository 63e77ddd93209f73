"""Which Redis topology a ``redis_url`` names: one node, a Sentinel set or a Cluster.

- ``redis://``, ``rediss://``, ``unix://``: one node, read by redis-py itself;
- ``redis+sentinel://[user:pass@]host[:port][,host[:port]…]/MASTER[?db=N&…]``:
  the sentinels (port 26379 by default) and the monitored master's name;
- ``redis+cluster://[user:pass@]host[:port][,host[:port]…][/][?…]``: seed
  nodes of a Cluster (port 6379 by default); the client finds the others.

Credentials in the user part authenticate the data nodes (master, replicas,
cluster nodes). ``sentinel_username`` / ``sentinel_password`` authenticate the
sentinels themselves. Percent-escapes are decoded in user, password and master.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl, unquote

from taskiq_dedup.errors import ConfigurationError

SENTINEL_SCHEME = "redis+sentinel"
CLUSTER_SCHEME = "redis+cluster"
SINGLE_SCHEMES = frozenset({"redis", "rediss", "unix"})

DEFAULT_SENTINEL_PORT = 26379
DEFAULT_CLUSTER_PORT = 6379

SENTINEL_OPTIONS = frozenset({"db", "sentinel_username", "sentinel_password"})
"""Query parameters a Sentinel URL may carry."""

Kind = Literal["single", "sentinel", "cluster"]

_PASSWORD_PARAM = re.compile(r"(?i)((?:^|&)(?:sentinel_)?password=)[^&]*")


def redacted(redis_url: str) -> str:
    """Return ``redis_url`` with credentials replaced by ``***`` (for logs).

    Every place a password is read from is masked: ``user:pass@`` and the
    ``password=`` / ``sentinel_password=`` query parameters, in every URL form.
    """
    scheme, sep, rest = redis_url.partition("://")
    base, qsep, query = rest.partition("?")
    if sep and "@" in base:
        base = "***@" + base.rpartition("@")[2]
    if qsep:
        query = _PASSWORD_PARAM.sub(r"\1***", query)
    return f"{scheme}{sep}{base}{qsep}{query}"


@dataclass(frozen=True)
class Topology:
    """A parsed ``redis_url``: its kind and what the client needs to connect."""

    kind: Kind
    url: str
    nodes: tuple[tuple[str, int], ...] = ()
    """Sentinels or cluster seed nodes (empty for one node)."""
    master: str = ""
    """The Sentinel master's name."""
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)


def parse_redis_url(redis_url: str) -> Topology:
    """Return the topology ``redis_url`` names; raise ``ConfigurationError`` if malformed.

    A one-node URL is only checked for its scheme: redis-py reads the rest.
    """
    if not isinstance(redis_url, str) or "://" not in redis_url:
        raise ConfigurationError(detail=f"redis_url must be a Redis URL, got {redis_url!r}")
    scheme, _, rest = redis_url.partition("://")
    scheme = scheme.lower()
    if scheme in SINGLE_SCHEMES:
        return Topology("single", redis_url)
    if scheme not in (SENTINEL_SCHEME, CLUSTER_SCHEME):
        raise ConfigurationError(
            detail=(
                f"redis_url {redacted(redis_url)}: unknown scheme {scheme!r}; use redis://, "
                f"rediss://, unix://, {SENTINEL_SCHEME}:// or {CLUSTER_SCHEME}://"
            ),
        )

    def bad(reason: str) -> ConfigurationError:
        return ConfigurationError(detail=f"redis_url {redacted(redis_url)}: {reason}")

    rest, _, query = rest.partition("?")
    userinfo, at, hosts_and_path = rest.rpartition("@")
    if not at:
        hosts_and_path = rest
    hosts, _, path = hosts_and_path.partition("/")
    username, password = _credentials(userinfo) if at else (None, None)
    options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=False))
    if scheme == CLUSTER_SCHEME:
        if path or options:
            raise bad("a cluster URL takes seed nodes only (no database, master name or options)")
        return Topology(
            "cluster",
            redis_url,
            _nodes(hosts, DEFAULT_CLUSTER_PORT, bad),
            username=username,
            password=password,
        )
    unknown = sorted(set(options) - SENTINEL_OPTIONS)
    if unknown:
        raise bad(f"unknown option(s) {', '.join(unknown)}; known: {sorted(SENTINEL_OPTIONS)}")
    master = unquote(path.strip("/"))
    if not master or "/" in master:
        raise bad("name the master after the sentinels: redis+sentinel://host:26379/MASTER")
    db_text = options.get("db", "0")
    if not db_text.isdigit():
        raise bad(f"db must be a number, got {db_text!r}")
    return Topology(
        "sentinel",
        redis_url,
        _nodes(hosts, DEFAULT_SENTINEL_PORT, bad),
        master=master,
        db=int(db_text),
        username=username,
        password=password,
        sentinel_username=options.get("sentinel_username") or None,
        sentinel_password=options.get("sentinel_password") or None,
    )


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    user, colon, password = userinfo.partition(":")
    if not colon:  # redis-py's rule: a lone word is the password
        return None, unquote(user) or None
    return unquote(user) or None, unquote(password) or None


def _nodes(
    hosts: str,
    default_port: int,
    bad: Callable[[str], ConfigurationError],
) -> tuple[tuple[str, int], ...]:
    nodes: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":") if ":" in item else (item, "", "")
        host = host.strip("[]") if colon else item.strip()
        if not host:
            raise bad(f"empty host in {hosts!r}")
        if colon and not port.isdigit():
            raise bad(f"port of {item!r} is not a number")
        number = int(port) if colon else default_port
        if not 0 < number < 65536:  # noqa: PLR2004 -- the TCP port range
            raise bad(f"port {number} of {item!r} is out of range")
        nodes.append((host, number))
    return tuple(nodes)
