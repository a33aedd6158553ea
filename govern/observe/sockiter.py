"""The socket scan through a BPF iterator (bpf/govern_sockets.c): the object it loads, the iterator link it holds
for the daemon's life, the protected ports it writes into the program's map, and one read of the iterator per tick
as numpy records, counted per source by the same numpy path as sock_diag's dumps (govern.observe.sockdiag).

sock_diag makes a netlink message with the whole tcp_info for each socket: 18-20 ms of kernel time a tick at 20k
sockets, which alone is the whole daemon's CPU target (docs/benchmarks.md). The iterator writes the 48 bytes the
scan reads. Everything else the observer does with sockets (listeners between ticks, cuts, SOCK_DESTROY, `govern
why`'s sessions) stays with sock_diag. Nothing is pinned: the link lives as long as the daemon's file descriptor,
and the iterator walks the sockets of the network namespace the daemon runs in.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from govern.addr import Prefix, PrefixSet
from govern.errors import KernelError
from govern.libbpf import check, lib
from govern.model import ListenerStats, Scan, ScanOptions, SessionInfo, Shed
from govern.observe.sockdiag import Scanner, ScanParser, SockDiag

log = logging.getLogger("govern")

OBJECT = Path(__file__).with_name("govern_sockets.o")
PROGRAM = b"govern_sockets"
PORTS_MAP = b"ports"
PORT_BYTES = 8192  # one bit a port
# struct govern_socket, with the field names the numpy path reads (govern.observe.sockdiag._records): the address
# read as an IPv4 address (its first 4 bytes), an IPv6 /64 (8) and the two halves of the rest.
RECORD = np.dtype(
    {
        "names": ["fam", "state", "sport", "sent", "a4", "hi", "mid", "lo", "recv", "segs_in", "brecv", "segs_out"],
        "formats": ["u1", "u1", "=u2", "=u4", ">u4", ">u8", ">u4", ">u4", "=u4", "=u4", "=u8", "=u4"],
        "offsets": [0, 1, 2, 4, 8, 8, 16, 20, 24, 28, 32, 40],
        "itemsize": 48,
    }
)
_READ = 1 << 20  # the kernel hands out at most a few pages a read: this only bounds the calls


class SockIter(Scanner):
    """The loaded iterator. Its `scan` (Scanner's) is SockDiag's for the numpy path (IPv6 sources grouped by /64 or
    shorter); KernelError when the kernel, libbpf or the object cannot give it."""

    def __init__(self, path: Path = OBJECT) -> None:
        b = lib()
        if not path.is_file():
            raise KernelError(f"socket iterator object {path} not found: build it with `make -C bpf`")
        self._obj = b.bpf_object__open_file(str(path).encode(), None)
        if not self._obj:
            raise KernelError(f"libbpf cannot open {path}: {os.strerror(ctypes.get_errno())}")
        self._link: int | None = None
        try:
            check(b.bpf_object__load(self._obj), f"loading {path}")
            prog = b.bpf_object__find_program_by_name(self._obj, PROGRAM)
            link = b.bpf_program__attach_iter(prog, None)
            err = b.libbpf_get_error(link)
            if not link or err:
                raise KernelError(f"attaching the socket iterator: {os.strerror(-err or ctypes.get_errno())}", -err)
            self._link = link
            self._link_fd = check(b.bpf_link__fd(link), "the socket iterator's link")
            self._ports_fd = check(b.bpf_map__fd(b.bpf_object__find_map_by_name(self._obj, PORTS_MAP)), "ports map")
        except BaseException:
            self.close()
            raise
        self._ports: frozenset[int] | None = None
        super().__init__()

    def close(self) -> None:
        b = lib()
        if self._link is not None:
            b.bpf_link__destroy(self._link)
            self._link = None
        if self._obj:
            b.bpf_object__close(self._obj)
            self._obj = None

    def _set_ports(self, ports: frozenset[int]) -> None:
        if ports == self._ports:
            return
        bits = (ctypes.c_uint8 * PORT_BYTES)()
        for p in ports:
            bits[p >> 3] |= 1 << (p & 7)
        key = ctypes.c_uint32(0)
        check(lib().bpf_map_update_elem(self._ports_fd, ctypes.byref(key), bits, 0), "writing the protected ports")
        self._ports = ports

    def records(self, ports: frozenset[int]) -> npt.NDArray[Any]:
        """One walk of the namespace's TCP sockets: a record per socket on `ports`, TIME_WAIT left out."""
        self._set_ports(ports)
        fd = lib().bpf_iter_create(self._link_fd)
        if fd < 0:
            raise KernelError(f"reading the socket iterator: {os.strerror(-fd)}", -fd)
        chunks: list[bytes] = []
        try:
            while chunk := os.read(fd, _READ):
                chunks.append(chunk)
        except OSError as exc:
            raise KernelError(f"reading the socket iterator: {exc.strerror}", exc.errno or 0) from None
        finally:
            os.close(fd)
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if len(data) % RECORD.itemsize:
            raise KernelError(f"the socket iterator gave {len(data)} bytes, not whole records of {RECORD.itemsize}")
        return np.frombuffer(data, RECORD)

    def _feed(self, ports: frozenset[int], parser: ScanParser) -> None:
        parser.feed_records(self.records(ports))


class IteratedSockets:
    """The daemon's SocketSource: the tick's scan through the BPF iterator, everything else through sock_diag; the
    scan too when the iterator cannot be loaded (an old kernel, no BTF, no CAP_BPF/CAP_PERFMON), fails, or the
    sources are grouped by more than an IPv6 /64 (the numpy path's keys are 8 bytes). `scanner` says which and
    why, for `govern status`."""

    def __init__(self, diag: SockDiag, make: Callable[[], SockIter] = SockIter) -> None:
        self.diag = diag
        self.iter: SockIter | None = None
        try:
            self.iter = make()
            self.scanner = "BPF iterator"
        except KernelError as exc:
            self.scanner = f"sock_diag (the BPF socket iterator did not load: {exc})"
            log.warning("socket scan through sock_diag: the BPF socket iterator did not load: %s", exc)

    def scan(self, opts: ScanOptions) -> Scan:
        if self.iter is not None and opts.v6_len <= 64:
            try:
                return self.iter.scan(opts)
            except KernelError as exc:
                # Once failed, never again in this run: a scan that fails every tick would cost more than it saves.
                self.iter.close()
                self.iter = None
                self.scanner = f"sock_diag (the BPF socket iterator failed: {exc})"
                log.error("socket scan through sock_diag from now on: the BPF socket iterator failed: %s", exc)
        return self.diag.scan(opts)

    def listeners(self, ports: frozenset[int]) -> Sequence[ListenerStats]:
        return self.diag.listeners(ports)

    def destroy(self, prefixes: Sequence[Prefix], ports: frozenset[int]) -> int:
        return self.diag.destroy(prefixes, ports)

    def cut(
        self,
        idle_ms: Mapping[Prefix, int],
        ports: frozenset[int],
        shed: Mapping[Prefix, Shed] | None = None,
        greet_ms: int = 0,
        pregreet_cut: bool = False,
    ) -> Mapping[Prefix, int]:
        return self.diag.cut(idle_ms, ports, shed, greet_ms, pregreet_cut)

    def sessions(self, prefix: Prefix | PrefixSet, ports: frozenset[int]) -> Sequence[SessionInfo]:
        return self.diag.sessions(prefix, ports)

    def close(self) -> None:
        if self.iter is not None:
            self.iter.close()
            self.iter = None
        self.diag.close()
