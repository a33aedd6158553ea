"""The XDP program's map names, keys and values as ctypes, mirroring bpf/govern_maps.h field for field.

tests/unit/test_xdp_maps.py parses the header and fails if anything here drifts from it.
"""

from __future__ import annotations

import ctypes

from govern.addr import Prefix

MAP_ALLOW4, MAP_ALLOW6, MAP_BLOCK4, MAP_BLOCK6 = "allow4", "allow6", "block4", "block6"
MAP_HOST4, MAP_HOST6, MAP_NET6 = "host4", "host6", "net6"
MAP_SYNS, MAP_STATS, MAP_PORTS = "syns", "stats", "ports"
PROG = "govern_xdp"
PREFIXES_MAX = 262144
HOSTS_MAX = 2097152
SOURCES_MAX = 262144
PORTS_MAX = 64
PASS_ALLOW, DROP_BLOCK, PASS_OTHER, REASONS = 0, 1, 2, 3
REASON_NAMES = {PASS_ALLOW: "pass_allow", DROP_BLOCK: "drop_block", PASS_OTHER: "pass_other"}


class Lpm4(ctypes.Structure):
    _fields_ = [("prefixlen", ctypes.c_uint32), ("addr", ctypes.c_uint8 * 4)]


class Lpm6(ctypes.Structure):
    _fields_ = [("prefixlen", ctypes.c_uint32), ("addr", ctypes.c_uint8 * 16)]


class Host4(ctypes.Structure):
    _fields_ = [("addr", ctypes.c_uint8 * 4)]


class Host6(ctypes.Structure):
    _fields_ = [("addr", ctypes.c_uint8 * 16)]


class Net64(ctypes.Structure):
    _fields_ = [("addr", ctypes.c_uint8 * 8)]


class Src(ctypes.Structure):
    _fields_ = [("family", ctypes.c_uint32), ("addr", ctypes.c_uint8 * 16)]


class Stat(ctypes.Structure):
    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]


class BlockValue(ctypes.Structure):
    _fields_ = [("expires_ns", ctypes.c_uint64)]


STRUCTS: dict[str, type[ctypes.Structure]] = {
    "govern_block": BlockValue,
    "govern_host4": Host4,
    "govern_host6": Host6,
    "govern_net64": Net64,
    "govern_lpm4": Lpm4,
    "govern_lpm6": Lpm6,
    "govern_src": Src,
    "govern_stat": Stat,
}


def lpm_key(p: Prefix) -> Lpm4 | Lpm6:
    raw = p.packed()
    if p.version == 4:
        return Lpm4(p.length, (ctypes.c_uint8 * 4)(*raw))
    return Lpm6(p.length, (ctypes.c_uint8 * 16)(*raw))


def block_key(p: Prefix) -> tuple[str, ctypes.Structure]:
    """The map a block of `p` lives in, and its key there: hosts and IPv6 /64s in hash maps, the rest in the tries."""
    raw = p.packed()
    if p.version == 4:
        return (MAP_HOST4, Host4((ctypes.c_uint8 * 4)(*raw))) if p.length == 32 else (MAP_BLOCK4, lpm_key(p))
    if p.length == 128:
        return MAP_HOST6, Host6((ctypes.c_uint8 * 16)(*raw))
    if p.length == 64:
        return MAP_NET6, Net64((ctypes.c_uint8 * 8)(*raw[:8]))
    return MAP_BLOCK6, lpm_key(p)


def hashed(p: Prefix) -> bool:
    """Whether blocks of `p` go into a hash map (block_key)."""
    return p.length == 32 if p.version == 4 else p.length in (64, 128)
