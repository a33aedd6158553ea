"""The fleet's Redis URL (`fleet.url`): what it names and the redis-py client that reaches it.

redis-py takes `redis://`, `rediss://` (TLS) and `unix://` URLs for one server, and a Cluster client from the same
URL of any one node; it has no URL for Sentinel. So govern reads two schemes of its own besides them, the ones other
Redis clients use:

    redis+cluster://[USER:PASSWORD@]HOST[:PORT][/0]
        any one node of a Redis Cluster (the client finds the others); with TLS: rediss+cluster://
    redis+sentinel://[USER:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]/SERVICE[/DB]
        the sentinels (port 26379 unless given), then the master's name as they know it; with TLS: rediss+sentinel://

The credentials are the data nodes' (a Sentinel's own password, if it has one, is `?sentinel_password=...`).
`parse` is pure (config validation uses it); `connect` makes the client.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster", "redis+sentinel", "rediss+sentinel")
DEFAULT_PORT = 6379
SENTINEL_PORT = 26379


@dataclass(frozen=True)
class Target:
    """What a fleet URL names: `mode` is "single" (one server, redis-py's own URL), "cluster" or "sentinel"."""

    mode: str
    url: str  # for "single" and "cluster": the URL redis-py takes
    hosts: tuple[tuple[str, int], ...] = ()  # the sentinels
    service: str = ""  # the master's name, as the sentinels know it
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None
    tls: bool = False


def _shown(s: str) -> str:
    """A URL for an error message, without a password."""
    parts = urlsplit(s) if "://" in s else None
    if parts is None or not parts.password:
        return repr(s)
    return repr(s.replace(f":{parts.password}@", ":***@", 1))


def _port(text: str, default: int, url: str) -> int:
    if text == "":
        return default
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{_shown(url)} has no valid port (1-65535)")
    return int(text)


def parse(url: str) -> Target:
    """What `url` names, or ValueError saying what is wrong with it (config validation shows the message)."""
    if not url.isprintable() or any(c.isspace() for c in url):
        raise ValueError(f"{_shown(url)} contains a space or a control character")
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in SCHEMES:
        raise ValueError(
            f"expected a redis://, rediss://, unix://, redis+cluster:// or redis+sentinel:// URL, got {_shown(url)}"
        )
    if not rest or (rest.startswith(("?", "/")) and scheme != "unix"):
        raise ValueError(f"{_shown(url)} names no server")
    if scheme == "unix":
        if not rest.startswith("/"):
            raise ValueError(f"a unix:// URL names an absolute socket path (unix:///run/redis.sock), got {_shown(url)}")
        return Target("single", url)
    if scheme.endswith("+sentinel"):
        return _sentinel(url, scheme, rest)
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when asked for it
    except ValueError:
        raise ValueError(f"{_shown(url)} has no valid port (1-65535)") from None
    if not parts.hostname:
        raise ValueError(f"{_shown(url)} names no server")
    if scheme.endswith("+cluster"):
        if parts.path not in ("", "/", "/0"):
            raise ValueError(f"a Redis Cluster has only database 0, got {_shown(url)}")
        return Target("cluster", scheme.removesuffix("+cluster") + "://" + rest, tls=scheme.startswith("rediss"))
    return Target("single", url, tls=scheme == "rediss")


def _sentinel(url: str, scheme: str, rest: str) -> Target:
    where, _, query = rest.partition("?")
    netloc, _, path = where.partition("/")
    creds, at, hostlist = netloc.rpartition("@")
    if not at:
        creds, hostlist = "", netloc
    username, _, password = creds.partition(":") if creds else ("", "", "")
    hosts: list[tuple[str, int]] = []
    for item in hostlist.split(","):
        if item.startswith("["):  # [IPv6]:port
            host, _, tail = item[1:].partition("]")
            port = _port(tail.removeprefix(":"), SENTINEL_PORT, url)
        else:
            host, _, port_text = item.partition(":")
            port = _port(port_text, SENTINEL_PORT, url)
        if not host:
            raise ValueError(f"{_shown(url)} names no sentinel")
        hosts.append((host, port))
    service, _, db_text = path.strip("/").partition("/")
    if not service:
        raise ValueError(f"{_shown(url)} names no master: redis+sentinel://HOST:PORT/SERVICE")
    if db_text and not db_text.isdigit():
        raise ValueError(f"{_shown(url)} has a database that is not a number")
    params = parse_qs(query)
    unknown = sorted(set(params) - {"sentinel_password"})
    if unknown:
        raise ValueError(f"{_shown(url)}: unknown parameter {unknown[0]!r} (known: sentinel_password)")
    return Target(
        "sentinel",
        url,
        hosts=tuple(hosts),
        service=unquote(service),
        db=int(db_text or 0),
        username=unquote(username) or None,
        password=unquote(password) or None,
        sentinel_password=params["sentinel_password"][-1] if "sentinel_password" in params else None,
        tls=scheme.startswith("rediss"),
    )


def connect(url: str, timeout: float, read_timeout: float) -> Any:
    """A redis-py client for `url` (not yet connected): a plain client, a Cluster client or a Sentinel's master."""
    import redis

    t = parse(url)
    if t.mode == "cluster":
        from redis.cluster import RedisCluster

        return RedisCluster.from_url(t.url, socket_timeout=read_timeout, socket_connect_timeout=timeout)
    if t.mode == "sentinel":
        from redis.sentinel import Sentinel

        sentinel_kwargs: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout, "ssl": t.tls}
        if t.sentinel_password:
            sentinel_kwargs["password"] = t.sentinel_password
        sentinel = Sentinel(
            list(t.hosts),
            sentinel_kwargs=sentinel_kwargs,
            socket_timeout=read_timeout,
            socket_connect_timeout=timeout,
            username=t.username,
            password=t.password,
            db=t.db,
            ssl=t.tls,
        )
        return sentinel.master_for(t.service)
    return redis.Redis.from_url(t.url, socket_timeout=read_timeout, socket_connect_timeout=timeout)
