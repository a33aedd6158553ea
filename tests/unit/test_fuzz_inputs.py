"""Fuzzing every way input comes in (issue 13, item 5): the config loader (mappings and TOML text), the control
protocol (arbitrary JSON bodies, through the daemon's own handler) and the address parsers. The property is the
project's rule: a valid result or govern's own error (UsageError, which names what is wrong), never any other
exception. Budgets are small so the suite stays in the unit run (a few seconds)."""

from __future__ import annotations

import json
import math
import os
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from govern import config, protocol
from govern.addr import Prefix
from govern.allow.files import parse_allow_text
from govern.control import call
from govern.daemon import Governor
from govern.errors import ConfigError, UsageError
from govern.fakes import FakeClock, FakeCounters, FakeEnforcer, FakeSockets
from govern.store import Store
from tests.unit.test_control import serve

# A longer hunt: GOVERN_FUZZ_SCALE=50 pytest tests/unit/test_fuzz_inputs.py
SCALE = int(os.environ.get("GOVERN_FUZZ_SCALE", "1"))
A = TypeVar("A")
T = TypeVar("T")
FUZZ = settings(max_examples=150 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- values as hostile as JSON and TOML can carry ---------------------------------------------------------------

huge_ints = st.sampled_from([10**400, -(10**400), 2**63, -(2**63) - 1, 2**64, 10**4000])
edge_floats = st.sampled_from([math.inf, -math.inf, math.nan, 1e300, -0.0, 5e-324, 1e308])
nasty_text = st.sampled_from(
    [
        "",
        " ",
        "\0",
        "/\0/x",
        "\n",
        "\x1b[2J",
        "9" * 400 + "s",
        "1e400s",
        "inf",
        "nan",
        "-1s",
        "0",
        "auto",
        "/proc/x",
        "/var/\x1b[2J",
        "/a\nb",
        "/a\x7fb",
        "eth\x1b",
        "/" + "a" * 5000,
        "::ffff:127.0.0.1",
        "0.0.0.0/0",
        "::/0",
        "192.0.2.0/33",
        "\udcff",
        "fe80::1%" + "e" * 60,
        "a." * 200 + "com",
    ]
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    huge_ints,
    st.floats(allow_nan=True, allow_infinity=True),
    edge_floats,
    st.text(max_size=80),
    nasty_text,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def one_line(exc: UsageError) -> str:
    """The refusal, checked to be what an operator can read: one line, not the whole input echoed back."""
    msg = str(exc)
    assert "\n" not in msg and len(msg) < 1000, msg[:300]
    return msg


def accepted(parse: Callable[[A], T], value: A) -> T | None:
    """What `parse` makes of `value`, or None when it refused it as it must: govern's own error, in one line."""
    try:
        return parse(value)
    except UsageError as exc:
        one_line(exc)
        return None


def deep(n: int, leaf: Any = 1) -> Any:
    out = leaf
    for _ in range(n):
        out = [out]
    return out


# -- the config loader ------------------------------------------------------------------------------------------

SECTIONS = sorted(config.SCHEMA)
KEYS = [(s, k) for s in SECTIONS for k in config.SCHEMA[s]]
# Leave the files alone: a fuzzed path must not make the loader read whatever happens to exist on this host.
SAFE_KEYS = [(s, k) for s, k in KEYS if (s, k) != ("allow", "files")]


@st.composite
def mappings(draw: st.DrawFn) -> dict[str, Any]:
    """A config mapping: mostly the schema's own sections and keys, each holding a hostile value, sometimes a
    section or key that does not exist, sometimes a section that is not a table."""
    out: dict[str, Any] = {}
    for section, key in draw(st.lists(st.sampled_from(SAFE_KEYS), max_size=6)):
        # Deeper than MAX_DEPTH, and shallow enough for hypothesis to print a failing example (its printer recurses).
        value = draw(st.one_of(json_values, st.just(deep(draw(st.integers(0, 200))))))
        out.setdefault(section, {})[key] = value
    if draw(st.booleans()):
        out[draw(st.text(max_size=10))] = draw(json_values)
    return out


@FUZZ
@given(mappings())
def test_from_mapping_gives_a_config_or_a_config_error(data: dict[str, Any]) -> None:
    cfg = accepted(config.from_mapping, data)
    if cfg is not None:
        cfg.policy()
        # `config show` prints TOML that loads back as the same config, whatever the strings hold.
        again = config.from_mapping(config.parse_toml(cfg.to_toml().encode(), "shown.toml"))
        assert again.values == cfg.values


toml_scalars = st.one_of(
    st.integers().map(str),
    st.integers(min_value=10**18, max_value=10**60).map(str),
    st.integers(0, 6000).map(lambda n: "9" * n),
    st.integers(0, 6000).map(lambda n: "0x" + "f" * n),
    st.integers(0, 500).map(lambda n: "9" * n + ".5"),
    st.sampled_from(["inf", "-inf", "nan", "1e400", "-1e-400", "true", "false", "1979-05-27T07:32:00Z"]),
    st.text(max_size=40).map(json.dumps),  # a basic string with escapes
    nasty_text.map(lambda s: json.dumps(s, ensure_ascii=False)),
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]"),
        st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), inner), max_size=3).map(
            lambda kv: "{" + ", ".join(f"{k} = {v}" for k, v in dict(kv).items()) + "}"
        ),
    ),
    max_leaves=12,
)


@st.composite
def toml_documents(draw: st.DrawFn) -> bytes:
    lines = []
    for section, key in draw(st.lists(st.sampled_from(SAFE_KEYS), max_size=5, unique=True)):
        lines.append(f"[{section}]\n{key} = {draw(toml_values)}")
    if draw(st.booleans()):
        n = draw(st.integers(1, 3000))
        lines.append(draw(st.sampled_from(["x = " + "[" * n + "]" * n, "x = " + "{a=" * n + "1" + "}" * n])))
    text = "\n".join(lines).encode("utf-8", "surrogatepass")  # a lone surrogate: bytes that are not UTF-8
    if draw(st.booleans()):  # damage: bytes that are not UTF-8, or not TOML
        text = draw(st.binary(max_size=20)) + text + draw(st.binary(max_size=20))
    return text


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


@FUZZ
@given(doc=toml_documents())
def test_load_gives_a_config_or_one_clear_line(scratch: Path, doc: bytes) -> None:
    path = scratch / "govern.toml"
    path.write_bytes(doc)
    try:
        config.load(str(path))
    except ConfigError as exc:
        assert one_line(exc).startswith(str(path))


@settings(max_examples=60 * SCALE, deadline=None)
@given(lines=st.lists(st.one_of(st.text(max_size=60), nasty_text), max_size=8))
def test_allow_file_text_gives_entries_or_a_config_error(lines: list[str]) -> None:
    try:
        entries = parse_allow_text("\n".join(lines), "partners.txt")
    except ConfigError as exc:
        assert str(exc).startswith("partners.txt:"), str(exc)
        return
    assert all(e.prefix.length > 0 for e in entries)


# -- the control protocol ---------------------------------------------------------------------------------------

FIELDS = sorted({f for k in protocol.KINDS.values() for f in k.__dataclass_fields__})


@st.composite
def bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A request as the daemon reads it off the socket: a JSON object, usually naming a real command and its
    fields, with values of any JSON type."""
    body: dict[str, Any] = {"cmd": draw(st.one_of(st.sampled_from(sorted(protocol.KINDS)), json_values))}
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=4)):
        body[name] = draw(st.one_of(json_values, st.just(deep(draw(st.integers(0, 50))))))
    if draw(st.booleans()):
        body[draw(st.text(max_size=8))] = draw(json_values)
    # What arrives is what json.loads made of bytes: round-trip so the fuzz holds no value JSON cannot carry.
    parsed: dict[str, Any] = json.loads(json.dumps(body))
    return parsed


@FUZZ
@given(bodies())
def test_protocol_parse_gives_a_request_or_a_usage_error(body: dict[str, Any]) -> None:
    req = accepted(protocol.parse, body)
    if req is not None:
        assert protocol.parse(protocol.to_wire(req)) == req


@pytest.fixture(scope="module")
def governor(scratch: Path) -> Governor:
    cfg = config.from_mapping(
        {
            "allow": {"cidrs": ["192.0.2.0/24"]},
            "daemon": {"state_dir": str(scratch / "state")},
            "modes": {"auto": False},
        }
    )
    gov = Governor(
        cfg, Store(cfg["daemon"]["state_dir"]), FakeSockets(), FakeEnforcer(), FakeCounters(), clock=FakeClock()
    )
    gov.start()
    return gov


@FUZZ
@given(bodies())
def test_the_daemon_answers_every_request_and_never_raises(governor: Governor, body: dict[str, Any]) -> None:
    reply = governor.handle(body)
    assert isinstance(reply.get("ok"), bool)
    json.dumps(reply, default=str)  # what the control server sends


@pytest.fixture(scope="module")
def served(governor: Governor, scratch: Path) -> Iterator[str]:
    """A real control socket whose requests the fuzzed daemon answers, as the main loop does."""
    path = str(scratch / "run" / "govern.sock")
    server, stop = serve(path, governor.handle, timeout=5.0)
    yield path
    stop.set()
    server.close()


raw_requests = st.one_of(
    st.binary(max_size=200),
    bodies().map(lambda b: json.dumps(b).encode()),
    st.integers(1, 200_000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 200_000).map(lambda n: b'{"cmd": "status", "top": ' + b"[" * n + b"]" * n + b"}"),
    st.sampled_from([b'{"cmd":"status","top":1e400}', b'{"cmd":"block","prefix":"1.2.3.4","duration":1e300}']),
    st.integers(4000, 6000).map(lambda n: b'{"cmd": "status", "top": ' + b"9" * n + b"}"),
)


@settings(max_examples=40 * SCALE, deadline=None)
@given(raw=raw_requests)
def test_the_control_socket_answers_any_bytes_with_a_reply(served: str, raw: bytes) -> None:
    """Whatever bytes a client sends, it gets one JSON reply, and the server answers the next client too."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(served)
        s.sendall(raw + b"\n")
        s.shutdown(socket.SHUT_WR)
        reply = json.loads(b"".join(iter(lambda: s.recv(65536), b"")))
    assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool)
    if not reply["ok"]:  # every bad request is the client's to fix: refused (the CLI exits 2), never a failure
        assert reply.get("refused") is True, reply
    assert call(served, {"cmd": "ping"}, timeout=5)["ok"]


# -- the address parsers ----------------------------------------------------------------------------------------

address_like = st.one_of(
    st.text(alphabet="0123456789abcdef.:/%", max_size=60),
    st.ip_addresses().map(str),
    st.tuples(st.ip_addresses(), st.integers(-5, 140)).map(lambda t: f"{t[0]}/{t[1]}"),
    nasty_text,
    st.text(max_size=80),
)


@settings(max_examples=400 * SCALE, deadline=None)
@given(text=address_like, strict=st.booleans())
def test_prefix_parse_gives_a_prefix_or_an_address_error(text: str, strict: bool) -> None:
    try:
        p = Prefix.parse(text, strict=strict)
    except UsageError as exc:
        assert len(str(exc)) < 300, str(exc)
        return
    assert 0 <= p.length <= p.bits and 0 <= p.value <= (1 << p.bits) - 1
    assert Prefix.parse(str(p), strict=True) == p  # what govern prints, it reads back as the same prefix
