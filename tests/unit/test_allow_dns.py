"""The real DNS adapter (govern.allow.dns.DnsPython) against a stub server on loopback: answers become records with
their TTL, a missing name an empty answer, and silence or SERVFAIL a DnsTempError within the timeout."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import dns.message
import dns.rcode
import dns.rrset
import pytest

from govern.allow.dns import DnsPython, DnsTempError
from govern.allow.spf import expand

ZONE = {
    ("partner.example.", "TXT"): ('"v=spf1 ip4:192.0.2.0/25 " "mx -all"', '"other text"'),
    ("partner.example.", "MX"): ("20 mx2.partner.example.", "10 mx1.partner.example."),
    ("mx1.partner.example.", "A"): ("192.0.2.25",),
    ("mx2.partner.example.", "AAAA"): ("2001:db8:2::25",),
}


@pytest.fixture
def server() -> Iterator[int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                wire, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            q = dns.message.from_wire(wire)
            name, rdtype = q.question[0].name.to_text().lower(), dns.rdatatype.to_text(q.question[0].rdtype)
            if name.startswith("silent."):
                continue
            r = dns.message.make_response(q)
            if name.startswith("broken."):
                r.set_rcode(dns.rcode.SERVFAIL)
            elif (name, rdtype) in ZONE:
                r.answer.append(
                    dns.rrset.from_text(name, 600 if rdtype != "A" else 90, "IN", rdtype, *ZONE[(name, rdtype)])
                )
            elif not any(n == name for n, _ in ZONE):
                r.set_rcode(dns.rcode.NXDOMAIN)
            sock.sendto(r.to_wire(), peer)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        t.join(2)
        sock.close()


def test_answers_missing_names_and_failures(server: int) -> None:
    r = DnsPython(0.5, nameservers=("127.0.0.1",), port=server)
    txt = r.query("partner.example", "TXT")
    assert set(txt.records) == {"v=spf1 ip4:192.0.2.0/25 mx -all", "other text"} and txt.ttl == 600
    assert r.query("partner.example", "MX").records == ("mx1.partner.example", "mx2.partner.example")
    assert r.query("mx1.partner.example", "A").records == ("192.0.2.25",)
    assert r.query("mx1.partner.example", "AAAA").void  # the name exists, without the type
    assert r.query("nowhere.example", "A").void
    with pytest.raises(DnsTempError):
        r.query("broken.example", "A")
    t0 = time.monotonic()
    with pytest.raises(DnsTempError, match=r"within 0\.5s"):
        r.query("silent.example", "A")
    assert time.monotonic() - t0 < 2


def test_spf_expands_through_the_real_adapter(server: int) -> None:
    r = DnsPython(0.5, nameservers=("127.0.0.1",), port=server)
    res = expand("partner.example", r.query)
    assert {str(p) for p, _ in res.prefixes} == {"192.0.2.0/25", "192.0.2.25", "2001:db8:2::25"}
    assert res.ttl == 90
