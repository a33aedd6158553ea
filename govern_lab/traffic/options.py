"""What each traffic role takes: the role names, their limits and defaults, the options dataclasses, and the
error a generator refuses a request with (exit status 2)."""

from __future__ import annotations

from dataclasses import dataclass

from govern_lab.addresses import DEFAULT_BOTS, DEFAULT_LEGIT, DEFAULT_TRUSTED, SLOWLEGIT, STRANGERS

ROLES = ("legit", "trusted", "hogs", "reconnect", "pretalk", "swarm", "synflood")
# The roles of the adversary matrix (govern_lab.traffic.adversaries): four more bots and two more kinds of
# legitimate sender.
MATRIX_ROLES = ("drip", "babble", "slowtalk", "prove", "strangers", "slowlegit")
ALL_ROLES = ROLES + MATRIX_ROLES
# Roles whose report is one event per SMTP transaction.
TXN_ROLES = ("legit", "trusted", "strangers", "slowlegit")


MAX_DURATION = 3600.0
MAX_PPS = 100_000
# When --count is not given, a role uses every host address of --sources if there are at most this many.
ALL_HOSTS_UP_TO = 256

DEFAULT_SOURCES: dict[str, tuple[str, ...]] = {
    "legit": DEFAULT_LEGIT,
    "trusted": DEFAULT_TRUSTED,
    "hogs": DEFAULT_BOTS,
    "reconnect": DEFAULT_BOTS,
    "pretalk": DEFAULT_BOTS,
    "swarm": DEFAULT_BOTS,
    "synflood": DEFAULT_BOTS,
    "drip": DEFAULT_BOTS,
    "babble": DEFAULT_BOTS,
    "slowtalk": DEFAULT_BOTS,
    "prove": DEFAULT_BOTS,
    # Never-seen senders: the upper half of the legitimate /24 and a /56 of its /48, away from the known relays.
    "strangers": STRANGERS,
    "slowlegit": SLOWLEGIT,
}
DEFAULT_COUNT = {
    "legit": 8,
    "trusted": 1,
    "hogs": 10,
    "reconnect": 10,
    "pretalk": 10,
    "swarm": 3000,
    "drip": 10,
    "babble": 10,
    "slowtalk": 10,
    "prove": 10,
    "strangers": 300,
    "slowlegit": 1,
}
DEFAULT_PER_SOURCE = {"hogs": 10, "pretalk": 2, "swarm": 2, "drip": 2, "babble": 2, "slowtalk": 2, "prove": 2}


class TrafficError(Exception):
    """A request the generator refuses (bad or unsafe arguments, wrong namespace): exit status 2."""


@dataclass(frozen=True, kw_only=True)
class Common:
    """What every role takes. `sources` empty means the role's default; `count` None means the role's default."""

    dst: tuple[str, ...]
    duration: float
    port: int = 25
    sources: tuple[str, ...] = ()
    count: int | None = None
    seed: int = 0


@dataclass(frozen=True, kw_only=True)
class TxnOptions(Common):
    """legit (`rate` transactions a second, each on its own, default 2) and trusted (up to `parallel` at once,
    back to back, or at most `rate` a second in all when a rate is given)."""

    rate: float | None = None
    parallel: int = 30
    timeout: float = 30.0  # connect + banner
    cmd_timeout: float = 30.0  # each command's reply
    txn_timeout: float = 120.0  # the whole transaction
    retry_delay: float = 1.0  # trusted: a worker's pause after a failed transaction
    # Message body size in KiB, drawn uniformly from [min, max] per message; (0, 0): a one-line message.
    size_kb: tuple[float, float] = (0.0, 0.0)
    pause: float = 0.0  # a slow client's pause before each command it sends (EHLO ... QUIT)
    banner_timeout: float | None = None  # None: `timeout` covers connect and banner; else connect only
    # MAIL, RCPT and DATA in one write where the server offers PIPELINING, as real MTAs send them; off for an old,
    # slow MTA (slowlegit) and for `--no-pipelining`.
    pipelining: bool = True
    # STARTTLS after EHLO where the server offers it, then EHLO again and the rest inside TLS, as every MTA does
    # where the MX offers it (the tls scenarios); no certificate check, as opportunistic TLS between MTAs.
    starttls: bool = False


@dataclass(frozen=True, kw_only=True)
class HoldOptions(Common):
    """hogs, pretalk and swarm: connections that are opened and then held (swarm: 1..per_source per source)."""

    per_source: int | None = None
    drip: float = 0.0  # 0: silent; else one byte of "EHLO ..." about every `drip` seconds
    ramp: float = 1.0  # connection starts are spread over this many seconds
    timeout: float = 10.0  # connect
    retry_delay: float = 1.0  # after a failed connect
    spread: int | None = None  # each source from a subnet of this length of its own (e.g. 64: one per /64)


@dataclass(frozen=True, kw_only=True)
class ReconnectOptions(Common):
    """reconnect: per source, connect, (read the banner), then QUIT, close or reset, at most `rate` a second."""

    rate: float = 5.0  # per source; 0 means as fast as the server answers
    style: str = "quit"  # quit | close | rst
    banner: bool = True
    timeout: float = 10.0  # connect, and the banner
    retry_delay: float = 0.2  # after a failed connect


@dataclass(frozen=True, kw_only=True)
class FloodOptions(Common):
    """synflood: spoofed SYNs from random addresses of `sources` (bot ranges only) at `pps`."""

    pps: float = 1000.0


Options = TxnOptions | HoldOptions | ReconnectOptions | FloodOptions
