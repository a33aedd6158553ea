"""The control protocol: every request survives the wire as it was built, and every malformed body is refused with
the field that is wrong named, never with another exception."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from govern import protocol
from govern.errors import UsageError

REQUESTS: list[protocol.Request] = [
    protocol.Ping(),
    protocol.Status(top=3),
    protocol.ListBlocks(),
    protocol.Block("198.18.0.0/24", "1h", "swarm"),
    protocol.Block("2001:db8:bad::/48"),
    protocol.Unblock("198.18.0.7"),
    protocol.Allow("192.0.2.0/24", remove=True, note="partner"),
    protocol.Wave("on", "15m"),
    protocol.Wave("off"),
    protocol.Wave("status"),
    protocol.Export(),
    protocol.Allowlist(),
    protocol.Why("198.51.100.7"),
    protocol.Teardown(),
]


@pytest.mark.parametrize("req", REQUESTS, ids=lambda r: r.CMD)
def test_a_request_comes_off_the_wire_as_it_was_built(req: protocol.Request) -> None:
    assert protocol.parse(json.loads(json.dumps(protocol.to_wire(req)))) == req


def test_every_command_has_a_request_and_the_cli_and_daemon_share_them() -> None:
    assert {type(r) for r in REQUESTS} == set(protocol.KINDS.values())


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({}, "unknown request None"),
        ({"cmd": "reboot"}, "unknown request 'reboot'"),
        ({"cmd": ["ping"]}, "unknown request ['ping']"),
        ({"cmd": "ping", "now": True}, "ping: unexpected field(s) 'now'; it takes none"),
        ({"cmd": "block"}, "block: missing field(s) 'prefix'"),
        ({"cmd": "block", "prefix": "not-an-ip"}, "prefix: 'not-an-ip' is not an IPv4/IPv6 address"),
        ({"cmd": "block", "prefix": 198}, "block: prefix must be a str, got int"),
        ({"cmd": "block", "prefix": "198.18.0.1", "duration": "soon"}, "duration: 'soon' is not a duration"),
        ({"cmd": "block", "prefix": "198.18.0.1", "duration": "400d"}, "duration: must be between 1s and 365d"),
        ({"cmd": "block", "prefix": "198.18.0.1", "reason": "a\nb"}, "reason: one line of at most 500"),
        ({"cmd": "block", "prefix": "198.18.0.1", "reason": "a\x1b[2Jb"}, "reason: one line of at most 500"),
        ({"cmd": "allow", "prefix": "198.18.0.1", "note": "x" * 501}, "note: one line of at most 500"),
        ({"cmd": "block", "prefix": "198.18.0.1", "duration": "9" * 400 + "s"}, "duration: '99999999"),
        ({"cmd": "block", "prefix": "1" * 10_000}, "is too long to be an address or prefix"),
        ({"cmd": "status", "top": float("inf")}, "status: top must be a int, got float"),
        ({"cmd": "allow", "prefix": "198.18.0.1", "remove": "yes"}, "allow: remove must be a bool, got str"),
        ({"cmd": "status", "top": True}, "status: top must be a int, got bool"),
        ({"cmd": "status", "top": -1}, "top: must be between 0 and 10000, got -1"),
        ({"cmd": "wave", "action": "maybe"}, "action: must be one of on, off, status, got 'maybe'"),
        ({"cmd": "wave", "action": "off", "duration": "1h"}, "duration: only 'wave on' takes one"),
        ({"cmd": "wave", "action": "on", "duration": "5s"}, "duration: must be between 10s and 7d"),
    ],
)
def test_a_malformed_request_is_refused_naming_what_is_wrong(body: dict[str, Any], problem: str) -> None:
    with pytest.raises(UsageError) as err:
        protocol.parse(body)
    assert problem in str(err.value)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=400, deadline=None)
@given(
    cmd=st.sampled_from([*protocol.KINDS, "nope"]) | JSON,
    fields=st.dictionaries(
        st.sampled_from(["prefix", "duration", "reason", "remove", "note", "action", "addr", "top", "x"]), JSON
    ),
)
def test_any_json_object_is_a_request_or_a_usage_error(cmd: Any, fields: dict[str, Any]) -> None:
    try:
        req = protocol.parse({"cmd": cmd, **fields})
    except UsageError:
        return
    assert protocol.parse(protocol.to_wire(req)) == req
