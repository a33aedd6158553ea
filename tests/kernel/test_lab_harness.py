"""The namespace harness itself: clients in `net` reach a listener in `mx` from chosen source addresses."""

from __future__ import annotations

from tests.netns import MX4, MX6, Lab, Listener, connect


def test_connect_from_bot_and_v6_sources(lab: Lab) -> None:
    srv = Listener(lab.mx, port=25)
    try:
        with lab.net.entered():
            a = connect("198.18.3.7", MX4, 25)
            b = connect("2001:db8:bad::9", MX6, 25)
        assert a.recv(64).startswith(b"220")
        assert b.recv(64).startswith(b"220")
        peers = {c.getpeername()[0] for c in srv.held}
        assert peers == {"::ffff:198.18.3.7", "2001:db8:bad::9"}
        a.close()
        b.close()
    finally:
        srv.close()
