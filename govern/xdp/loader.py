"""Loading bpf/govern_xdp.o through libbpf (Debian's libbpf1) with ctypes: open, load, attach in native mode, pin
the maps under a pin root, update and read the maps, detach and unpin. libbpf's errors (negative errno) are turned
into KernelError here, once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

from govern.addr import Prefix
from govern.errors import KernelError
from govern.keys import Counted, group_counts
from govern.libbpf import check as _check
from govern.libbpf import lib
from govern.xdp import maps

XDP_FLAGS_DRV_MODE = 1 << 2
# Entries of the SYN counters' map read by one BPF_MAP_LOOKUP_BATCH: more than a hash bucket ever holds (a smaller
# buffer than a bucket's entries is ENOSPC), 80 KiB of keys.
SYN_BATCH = 4096
_T = TypeVar("_T", bound=ctypes.Structure | ctypes.c_uint16)
BPF_ANY = 0
ALL_MAPS: tuple[str, ...] = (maps.MAP_ALLOW4, maps.MAP_ALLOW6, maps.MAP_BLOCK4, maps.MAP_BLOCK6)
ALL_MAPS += (maps.MAP_HOST4, maps.MAP_HOST6, maps.MAP_NET6)
ALL_MAPS += (maps.MAP_SYNS, maps.MAP_STATS, maps.MAP_PORTS)


class XdpProgram:
    """One loaded govern_xdp object, its maps pinned under `pin_root`, attached to `ifaces`."""

    def __init__(self, obj_path: str, pin_root: str) -> None:
        self.pin_root = Path(pin_root)
        self.ifindexes: list[int] = []
        b = lib()
        if not Path(obj_path).is_file():
            raise KernelError(f"XDP object {obj_path} not found: build it with `make -C bpf`")
        self.obj = b.bpf_object__open_file(obj_path.encode(), None)
        if not self.obj:
            raise KernelError(f"libbpf cannot open {obj_path}: {os.strerror(ctypes.get_errno())}")
        try:
            # Maps pinned by an earlier run are reused (libbpf reuses a pin at its pin path), so blocks survive a
            # restart of the daemon just as the firewall's sets do.
            try:
                self.pin_root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise KernelError(
                    f"cannot make {self.pin_root} for the XDP maps' pins: {exc.strerror} (is a bpf filesystem "
                    "mounted at /sys/fs/bpf? `mount -t bpf bpf /sys/fs/bpf`)",
                    exc.errno or 0,
                ) from None
            for name in ALL_MAPS:
                m = b.bpf_object__find_map_by_name(self.obj, name.encode())
                _check(b.bpf_map__set_pin_path(m, str(self.pin_root / name).encode()), f"pin path of map {name}")
            _check(b.bpf_object__load(self.obj), f"loading {obj_path}")
        except BaseException:
            b.bpf_object__close(self.obj)
            raise
        self.fds = {name: b.bpf_map__fd(b.bpf_object__find_map_by_name(self.obj, name.encode())) for name in ALL_MAPS}
        self.prog_fd = b.bpf_program__fd(b.bpf_object__find_program_by_name(self.obj, maps.PROG.encode()))
        self.ncpu = _check(b.libbpf_num_possible_cpus(), "counting CPUs")

    def attach(self, ifaces: Sequence[str]) -> None:
        for name in ifaces:
            try:
                idx = socket.if_nametoindex(name)
            except OSError:
                raise KernelError(f"no interface {name} to attach XDP to") from None
            _check(lib().bpf_xdp_attach(idx, self.prog_fd, XDP_FLAGS_DRV_MODE, None), f"attaching XDP to {name}")
            self.ifindexes.append(idx)

    def set_ports(self, ports: Iterable[int]) -> None:
        wanted = {int(p) for p in ports}
        have = {int(k.value) for k in self._keys(maps.MAP_PORTS, ctypes.c_uint16)}
        for p in have - wanted:
            self._delete(maps.MAP_PORTS, ctypes.c_uint16(p))
        for p in wanted - have:
            self._update(maps.MAP_PORTS, ctypes.c_uint16(p), ctypes.c_uint8(1))

    def update(self, kind: str, add: Iterable[Prefix] | Mapping[Prefix, float], remove: Iterable[Prefix] = ()) -> None:
        """Add and remove prefixes of the allow or block maps (`kind` is "allow" or "block"); removes first.

        Blocks given as a mapping lapse in the kernel after that many seconds (the program compares with
        bpf_ktime_get_ns); as a plain iterable, never. Blocks of hosts and IPv6 /64s go into hash maps, others into
        the LPM tries (maps.block_key). The kernel has no batch operation for LPM tries: one syscall per element,
        ~1 us each, whatever the map holds.
        """
        for p in remove:
            name, key = maps.block_key(p) if kind == "block" else (f"{kind}{p.version}", maps.lpm_key(p))
            self._delete(name, key, missing_ok=True)
        left = add if isinstance(add, Mapping) else dict.fromkeys(add, 0.0)
        now_ns = time.monotonic_ns()  # CLOCK_MONOTONIC, as bpf_ktime_get_ns
        for p, seconds in left.items():
            if kind == "block":
                expires = now_ns + max(1, int(seconds * 1e9)) if seconds > 0 else 0
                self._update(*maps.block_key(p), maps.BlockValue(expires))
            else:
                self._update(f"{kind}{p.version}", maps.lpm_key(p), ctypes.c_uint8(1))

    def prefixes(self, kind: str) -> set[Prefix]:
        out: set[Prefix] = set()
        for v, struct in ((4, maps.Lpm4), (6, maps.Lpm6)):
            for k in self._keys(f"{kind}{v}", struct):
                out.add(Prefix.from_packed(bytes(k.addr), k.prefixlen))
        if kind == "block":
            out.update(Prefix.from_packed(bytes(k.addr)) for k in self._keys(maps.MAP_HOST4, maps.Host4))
            out.update(Prefix.from_packed(bytes(k.addr)) for k in self._keys(maps.MAP_HOST6, maps.Host6))
            out.update(Prefix.from_packed(bytes(k.addr) + bytes(8), 64) for k in self._keys(maps.MAP_NET6, maps.Net64))
        return out

    def tidy(self) -> int:
        """Delete the blocks of hosts and /64s that maps pinned by an earlier version hold in the LPM tries (the
        caller writes them again, into the hash maps); returns how many."""
        n = 0
        for v, struct in ((4, maps.Lpm4), (6, maps.Lpm6)):
            for k in self._keys(f"block{v}", struct):
                if maps.hashed(Prefix.from_packed(bytes(k.addr), k.prefixlen)):
                    self._delete(f"block{v}", k, missing_ok=True)
                    n += 1
        return n

    def syn_counts(self, v4_len: int = 32, v6_len: int = 128) -> Counted:
        """Every source's SYN count, per source group, as columns. The map is read in batches
        (BPF_MAP_LOOKUP_BATCH, SYN_BATCH entries a call), not a key and then its value a call each: that was two
        syscalls and two ctypes objects a source, 1.35 s at 100,000 sources (docs/benchmarks.md, "XDP maps")."""
        fd = self.fds[maps.MAP_SYNS]
        size = ctypes.sizeof(maps.Src)
        keys_buf = (ctypes.c_uint8 * (size * SYN_BATCH))()
        values_buf = (ctypes.c_uint64 * SYN_BATCH)()
        # A hash map's batch token is a bucket index (u32); given back as the next call's start.
        start, nxt = ctypes.c_uint32(), ctypes.c_uint32()
        keys, values = bytearray(), bytearray()
        first = True
        while True:
            count = ctypes.c_uint32(SYN_BATCH)
            rc = lib().bpf_map_lookup_batch(
                fd,
                None if first else ctypes.byref(start),
                ctypes.byref(nxt),
                keys_buf,
                values_buf,
                ctypes.byref(count),
                None,
            )
            if rc < 0 and -rc != errno.ENOENT:  # ENOENT: the last batch, perhaps with entries
                _check(rc, f"reading XDP map {maps.MAP_SYNS}")
            keys += memoryview(keys_buf).cast("B")[: count.value * size]
            values += memoryview(values_buf).cast("B")[: count.value * 8]
            if rc < 0:
                break
            start.value, first = nxt.value, False
        src = np.frombuffer(keys, np.dtype([("family", np.uint32), ("addr", np.uint8, (16,))]))
        counts = np.frombuffer(values, np.uint64)
        parts = []
        for version, plen, width in ((4, v4_len, 4), (6, v6_len, 16)):
            pick = src["family"] == version
            addrs = np.ascontiguousarray(src["addr"][pick][:, :width])
            parts.append(group_counts(addrs.tobytes(), counts[pick].astype(">u8").tobytes(), version, plen))
        return Counted.concat(parts)

    def stats(self) -> Mapping[str, tuple[int, int]]:
        """Packets and bytes per reason, summed over CPUs."""
        out: dict[str, tuple[int, int]] = {}
        values = (maps.Stat * self.ncpu)()
        for reason, name in maps.REASON_NAMES.items():
            key = ctypes.c_uint32(reason)
            rc = lib().bpf_map_lookup_elem(self.fds[maps.MAP_STATS], ctypes.byref(key), values)
            _check(rc, "reading the XDP counters")
            out[name] = (sum(v.packets for v in values), sum(v.bytes for v in values))
        return out

    def detach(self) -> None:
        for idx in self.ifindexes:
            lib().bpf_xdp_detach(idx, XDP_FLAGS_DRV_MODE, None)
        self.ifindexes.clear()

    def close(self) -> None:
        lib().bpf_object__close(self.obj)

    # -- map access ---------------------------------------------------------------------------------------

    def _update(self, name: str, key: ctypes._CData, value: ctypes._CData) -> None:
        rc = lib().bpf_map_update_elem(self.fds[name], ctypes.byref(key), ctypes.byref(value), BPF_ANY)
        _check(rc, f"updating XDP map {name}")

    def _delete(self, name: str, key: ctypes._CData, *, missing_ok: bool = False) -> None:
        rc = lib().bpf_map_delete_elem(self.fds[name], ctypes.byref(key))
        if rc < 0 and not (missing_ok and -rc == errno.ENOENT):
            _check(rc, f"deleting from XDP map {name}")

    def _keys(self, name: str, struct: type[_T]) -> list[_T]:
        keys: list[_T] = []
        prev: _T | None = None
        while True:
            nxt = struct()
            cur = ctypes.byref(prev) if prev is not None else None
            rc = lib().bpf_map_get_next_key(self.fds[name], cur, ctypes.byref(nxt))
            if rc < 0:
                return keys
            keys.append(nxt)
            prev = nxt


def unpin(pin_root: str) -> bool:
    """Remove the pinned maps (the maps go once nothing holds them); True if there was a pin root."""
    root = Path(pin_root)
    if not root.exists():
        return False
    shutil.rmtree(root)
    return True


def detach_all(ifaces: Sequence[str]) -> bool:
    """Detach whatever native XDP program these interfaces run (used without a loaded object, at teardown)."""
    found = False
    for name in ifaces:
        try:
            idx = socket.if_nametoindex(name)
        except OSError:
            continue
        if attached(idx):
            _check(lib().bpf_xdp_detach(idx, XDP_FLAGS_DRV_MODE, None), f"detaching XDP from {name}")
            found = True
    return found


def attached(ifindex: int) -> bool:
    prog_id = ctypes.c_uint32()
    rc = lib().bpf_xdp_query_id(ifindex, XDP_FLAGS_DRV_MODE, ctypes.byref(prog_id))
    return rc == 0 and prog_id.value != 0
