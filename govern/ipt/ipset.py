"""ipset through its own command line, for what happens at set-up: creating sets (and making anew one of another
form), one `ipset restore` batch of the elements to restore, `ipset save` to read a set back. The element changes and
reads of every tick go over netlink instead (govern/ipt/netlink.py): a process costs 1-3 ms however small the plan
(docs/benchmarks.md, "The iptables backend's per-tick reads").

Measured here against pyroute2's ipset netlink API (one request and acknowledgement per element, no batching): 1,000
adds took 11 ms through one `ipset restore` against 235 ms through pyroute2.
ipset has no transactions: `restore` stops at the first bad line with the lines
before it applied, which is why every line is made to be unable to fail (`-exist`, deletes of what is held).
"""

from __future__ import annotations

import itertools
import subprocess
from collections.abc import Sequence
from typing import NamedTuple

from govern.addr import Prefix
from govern.errors import AddressError, KernelError

IPSET = "ipset"


class Entry(NamedTuple):
    prefix: Prefix
    timeout_s: int  # seconds left; 0 in a set without timeouts
    packets: int


def _run(args: Sequence[str], stdin: str = "") -> str:
    try:
        res = subprocess.run([IPSET, *args], input=stdin, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise KernelError("ipset is not installed; install Debian's ipset package") from None
    if res.returncode != 0:
        raise KernelError(f"ipset {' '.join(args)}: {res.stderr.strip() or f'exit status {res.returncode}'}")
    return res.stdout


def restore(lines: Sequence[str]) -> None:
    """Apply these `ipset restore` lines in one process, tolerating existing elements (`-exist`)."""
    if lines:
        _run(["restore", "-exist"], "\n".join(lines) + "\n")


def names() -> list[str]:
    return _run(["list", "-n"]).split()


def headers() -> dict[str, tuple[str, ...]]:
    """Every set's type and header words (`ipset list -t`): name -> ("hash:net", "family", "inet", ...)."""
    out: dict[str, tuple[str, ...]] = {}
    name = kind = ""
    for line in _run(["list", "-t"]).splitlines():
        key, _, value = line.partition(":")
        if key == "Name":
            name = value.strip()
        elif key == "Type":
            kind = value.strip()
        elif key == "Header" and name:
            out[name] = (kind, *value.split())
    return out


def differs(create: str, header: tuple[str, ...]) -> bool:
    """Whether a set listed with `header` (`headers`) is not the one the `create` line makes: another type, or
    another value of an option the line names and the header shows (it leaves out options at their default, such
    as `netmask 32`). `ipset create -exist` refuses such a set, it never changes it."""
    words = create.split()
    kind, opts = words[2], words[3:]
    have = header[1:]
    pairs = dict(itertools.pairwise(have))
    i = 0
    while i < len(opts):
        if opts[i] == "counters":
            if "counters" not in have:
                return True
            i += 1
            continue
        if opts[i] in pairs and pairs[opts[i]] != opts[i + 1]:
            return True
        i += 2
    return kind != header[0]


def save(name: str) -> list[Entry]:
    """Every element of a set with its timeout and packet counter."""
    out: list[Entry] = []
    for line in _run(["save", name]).splitlines():
        words = line.split()
        if len(words) < 3 or words[0] != "add":
            continue
        opts = dict(zip(words[3::2], words[4::2], strict=False))
        try:
            prefix = Prefix.parse(words[2])
        except AddressError:
            continue
        out.append(Entry(prefix, int(opts.get("timeout", 0)), int(opts.get("packets", 0))))
    return out
