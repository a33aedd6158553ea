"""Benchmark: enumerate N established sockets on port 25 -- govern's sock_diag observer vs `ss` vs psutil.

    .venv/bin/python bench/bench_observer.py [--sockets 20000 ...] [--reps 20] [--per-source 1]
        [--other-sockets 0] [--shared-hash]

Needs root; not part of the test suite. It builds its own namespaces (tests/netns.py's topology, see `BenchLab`)
and removes them at the end, also on failure. The MX side (a dual-stack listener on [::]:25 that accepts and holds
every connection and sends a banner) and the clients run in child processes -- as many as the fd limit requires --
so the measuring process holds no sockets of its own (psutil walks every process's fds). At most PER_PROCESS
(15,000) connections per process: the hard fd limit may be 20,000, so 50,000 sockets take 4 servers and 4
client processes. After each size is set up, the memory it costs is printed (helper processes' RSS, the host's
MemAvailable drop, TCP sockets and buffer memory from /proc/net/sockstat). Clients connect from the
bot ranges of docs/testing.md: three in four sources from 198.18.0.0/16 (IPv4-mapped on the dual-stack listener),
one in four from 2001:db8:bad::/48, each in its own /64; `--per-source` connections from each address.

Every contender runs in the MX namespace, once to warm up and then `--reps` times round-robin (one of each per
round, so drift hits all alike); medians are reported:
- govern scan: `SockDiag.scan(ScanOptions(frozenset({25}), idle_after_ms=0))`, the whole of it (dump, parse, per-source
  aggregation). The clients never speak, so with idle_after_ms=0 every socket is idle: the parser's longest path.
  Variants: every source new since the last scan (no cached source groups); with the cyclic GC held off during
  the scan (what the collections its allocations trigger cost); without the in-kernel port filter;
  one SOCK_DIAG_BY_FAMILY dump per family instead of one TCPDIAG_GETSOCK dump; and the netlink dump alone,
  nothing parsed (the kernel's share and the syscalls).
- ss: `ss -Htni state established '( sport = :25 )'` as a subprocess, output read through a pipe; also `-Htn`.
- psutil: `psutil.net_connections('tcp')` filtered to local port 25 (fewer rounds: it is slow).
Last, `SockDiag.destroy` of all N sockets is timed once.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import resource
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import machine  # noqa: E402
from govern import netlink  # noqa: E402
from govern.addr import Prefix  # noqa: E402
from govern.model import Scan, ScanOptions  # noqa: E402
from govern.observe import sockdiag  # noqa: E402
from govern.observe.sockdiag import SockDiag  # noqa: E402
from govern.observe.sockiter import SockIter  # noqa: E402
from tests.netns import MX4, MX6, Lab, Netns, entered, new_name, sh  # noqa: E402

PORT = 25
OTHER_PORT = 8025  # not protected: sockets the observer must skip
BANNER = b"220 mx.bench ESMTP\r\n"
SS_CMD = ["ss", "-Htni", "state", "established", f"( sport = :{PORT} )"]


def _raise_nofile(n: int) -> None:
    want = n + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))


# --- child processes -------------------------------------------------------------------------------------------
# A process may hold at most RLIMIT_NOFILE fds, and root here may lack CAP_SYS_RESOURCE to raise the hard limit
# (20000 on the reference machine): both sides are spread over as many processes as PER_PROCESS requires.

PER_PROCESS = 15000


def run_server(fds: list[int], cap: int, answer: bool = False) -> None:
    """Accept on the inherited listening sockets and hold up to `cap` connections, until stdin closes. With
    `answer`, also read what the clients send and answer each line as an MTA would (bench_daemon's talking
    sessions); without it, never read (the observer's idle sockets)."""
    _raise_nofile(cap)
    lsocks = [socket.socket(fileno=fd) for fd in fds]
    held: list[socket.socket] = []
    sel = selectors.DefaultSelector()
    for lsock in lsocks:
        lsock.setblocking(False)
        sel.register(lsock, selectors.EVENT_READ, "listener")
    stdin = sys.stdin
    sel.register(stdin, selectors.EVENT_READ, "stdin")
    full = False
    while True:
        for key, _ in sel.select(timeout=1.0):
            if key.data == "stdin":
                if not stdin.readline():  # the parent closed our stdin: time to go
                    for c in held + lsocks:
                        c.close()
                    return
                print(f"held {len(held)}", flush=True)
                continue
            if key.data == "session":
                _answer(sel, key.fileobj)  # type: ignore[arg-type]
                continue
            listener = lsocks[[ls.fileno() for ls in lsocks].index(key.fd)]
            while len(held) < cap:
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    break
                with contextlib.suppress(OSError):
                    conn.send(BANNER)
                held.append(conn)
                if answer:
                    conn.setblocking(False)
                    sel.register(conn, selectors.EVENT_READ, "session")
            if len(held) >= cap and not full:
                # Full: leave the rest of the queues to the other server processes.
                full = True
                for lsock in lsocks:
                    sel.unregister(lsock)


def _answer(sel: selectors.BaseSelector, conn: socket.socket) -> None:
    try:
        data = conn.recv(4096)
    except OSError:
        data = b""
    if not data:  # the client went: stop watching (the socket stays held, closed at the end)
        sel.unregister(conn)
        return
    with contextlib.suppress(OSError):
        conn.send(b"250 2.0.0 Ok\r\n" * max(1, data.count(b"\n")))


def source_address(i: int) -> tuple[str, str]:
    """The i-th bot source and the MX address it connects to."""
    if i % 4 == 3:
        return f"2001:db8:bad:{i // 4:x}::1", MX6
    j = i - i // 4  # 0, 1, 2, 3, 4, 5 ... over the IPv4 sources
    return f"198.18.{j // 250}.{j % 250 + 1}", MX4


def run_clients(ns: str, cap: int, per_source: int, talk_every: float = 0.0) -> None:
    """On each stdin line 'add FIRST COUNT PORT', open connections FIRST.. FIRST+COUNT-1 to PORT; at EOF, close all
    and exit. With `talk_every` > 0 each connection sends one command line every `talk_every` seconds (spread
    evenly over the connections) and reads its replies, as live sessions do; otherwise they never speak."""
    _raise_nofile(cap)
    conns: list[socket.socket] = []
    sel = selectors.DefaultSelector()
    sel.register(sys.stdin, selectors.EVENT_READ, None)
    turn, due = 0, time.monotonic()
    while True:
        for key, _ in sel.select(timeout=0.1 if talk_every and conns else None):
            if key.data is not None:  # replies: read and dropped, so no receive queue grows
                with contextlib.suppress(OSError):
                    key.data.recv(4096)
                continue
            line = sys.stdin.readline()
            if not line:
                for s in conns:
                    s.close()
                return
            _, first, count, port = line.split()
            with entered(ns):
                for i in range(int(first), int(first) + int(count)):
                    src, dst = source_address(i // per_source)
                    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
                    s = socket.socket(fam, socket.SOCK_STREAM)
                    s.settimeout(5.0)
                    s.bind((src, 0))
                    s.connect((dst, int(port)))
                    conns.append(s)
                    if talk_every:
                        s.setblocking(False)
                        sel.register(s, selectors.EVENT_READ, s)
            print(f"open {len(conns)}", flush=True)
        if talk_every and conns:
            # Each connection's turn comes every talk_every seconds: as many lines now as are due since the last.
            now = time.monotonic()
            step = talk_every / len(conns)
            while due <= now:
                with contextlib.suppress(OSError):
                    conns[turn % len(conns)].send(b"NOOP\r\n")
                turn += 1
                due += step
            due = max(due, now - 1.0)  # after a pause (a busy CPU), catch up at most a second's worth


# --- measuring --------------------------------------------------------------------------------------------------


def _walk_only_object() -> Path:
    """bpf/govern_sockets.c built with GOVERN_WALK_ONLY (its program returns at once): the iterator's cost without
    the program's work or output. Needs clang (the test command installs it)."""
    out = Path(tempfile.mkdtemp(prefix="govern-bench-")) / "walk_only.o"
    src = ROOT / "bpf" / "govern_sockets.c"
    inc = f"/usr/include/{os.uname().machine}-linux-gnu"
    subprocess.run(
        ["clang", "-O2", "-g", "-target", "bpf", f"-I{inc}", "-DGOVERN_WALK_ONLY", "-c", str(src), "-o", str(out)],
        check=True,
    )
    return out


def measure(mx: str, n: int, reps: int) -> dict[str, float]:
    """Median ms of each contender, run round-robin (one of each per round) so that drift hits all alike."""
    import psutil

    ports = frozenset({PORT})
    with entered(mx):
        diag = SockDiag()
        it = SockIter()
        walk = SockIter(_walk_only_object())

    def scan() -> Scan:
        # Every client is silent after the banner: with idle_after_ms=0 each of its sockets is idle, so the
        # parser takes its longest path for every socket.
        return diag.scan(ScanOptions(ports, idle_after_ms=0))

    try:
        first = scan()
        seen = sum(c.established for c in first.sources.values())
        idle = sum(c.idle for c in first.sources.values())
        if seen != n or first.sockets != n or idle != n:
            raise RuntimeError(f"scan saw {seen} established sockets, {idle} idle; expected {n}")

        def iter_scan() -> Scan:
            # The iterator walks the namespace it is read from (the setns of `entered` is ~0.02 ms of it).
            with entered(mx):
                return it.scan(ScanOptions(ports, idle_after_ms=0))

        def iter_read() -> None:
            with entered(mx):
                it.records(ports)

        def walk_only() -> None:
            with entered(mx):
                walk.records(ports)

        other = iter_scan()
        counts = {p: c[:4] for p, c in first.sources.items()}  # the waits grow between the two reads
        if {p: c[:4] for p, c in other.sources.items()} != counts or other.sockets != n:
            raise RuntimeError("the BPF iterator's scan differs from sock_diag's")

        def fresh_sources() -> object:
            diag.groups.clear()  # as if every source were new since the last tick
            return scan()

        def variant(**attrs: bool) -> Callable[[], object]:
            def run() -> object:
                for k, v in attrs.items():
                    setattr(diag, k, v)
                try:
                    return scan()
                finally:
                    for k in attrs:
                        delattr(diag, k)

            return run

        def gc_off() -> object:
            # The same scan with the cyclic GC held off: what the collections its allocations trigger cost.
            gc.disable()
            try:
                return scan()
            finally:
                gc.enable()

        def dump_only() -> None:
            # The kernel's part and the syscalls: the same request, nothing parsed.
            req = sockdiag._STATES_SCAN, sockdiag._EXT_INFO
            diag._dump_all(ports, *req, lambda buf, size: buf[4] == netlink.NLMSG_DONE)

        def listeners_only() -> None:
            # What the daemon reads between ticks (daemon.queue_poll): the listening sockets alone.
            if len(diag.listeners(ports)) != 1:
                raise RuntimeError("expected the one listener")

        def run_ss() -> None:
            with entered(mx):  # fork from a thread in the MX namespace: ss runs there
                out = subprocess.run(SS_CMD, stdout=subprocess.PIPE, check=True).stdout
            lines = out.count(b"\n")
            if lines < n:
                raise RuntimeError(f"ss printed {lines} lines for {n} sockets")

        def run_ss_plain() -> None:
            with entered(mx):
                subprocess.run([c for c in SS_CMD if c != "-Htni"] + ["-Htn"], stdout=subprocess.PIPE, check=True)

        contenders: dict[str, Callable[[], object]] = {
            "govern scan": scan,
            "govern scan, BPF iterator": iter_scan,
            "BPF iterator read alone (no counting)": iter_read,
            "BPF iterator, the kernel's walk alone": walk_only,
            "govern scan, all sources new": fresh_sources,
            "govern scan, cyclic GC off": gc_off,
            "govern, no kernel port filter": variant(kernel_filter=False),
            "govern, one dump per family": variant(one_walk=False),
            "netlink dump alone (no parsing)": dump_only,
            "listeners only (between ticks)": listeners_only,
            "ss -Htni": run_ss,
            "ss -Htn (no tcp_info)": run_ss_plain,
        }
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for fn in contenders.values():
            fn()  # warm-up: the first dump gives sockets their cookies, buffers get paged in
        for _ in range(reps):
            for name, fn in contenders.items():
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1000)
    finally:
        diag.close()
        it.close()
        walk.close()

    def run_psutil() -> None:
        with entered(mx):  # psutil reads /proc/net/tcp{,6}: those of this (main) thread's namespace
            got = [c for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == PORT and c.raddr]
        if len(got) != n:
            raise RuntimeError(f"psutil saw {len(got)} connections, expected {n}")

    times["psutil.net_connections"] = []
    run_psutil()
    for _ in range(max(3, reps // 4)):
        t0 = time.perf_counter()
        run_psutil()
        times["psutil.net_connections"].append((time.perf_counter() - t0) * 1000)
    return {name: statistics.median(ts) for name, ts in times.items()}


class BenchLab(Lab):
    """tests/netns.py's topology, except that the client namespace gets an established hash of its own.

    Every network namespace shares the host's TCP established hash unless it was created from a namespace with
    net.ipv4.tcp_child_ehash_entries set. With a shared hash, the MX's dump would also step over the 20k client
    ends of the connections, which on a real MX live on other hosts. So `net` is created from inside a helper
    namespace (`parent`) that sets that sysctl; the MX namespace keeps the host's hash, as a real MX does. The
    root namespace is not touched.
    """

    def __init__(self) -> None:
        super().__init__()
        self.parent = Netns(new_name("par"))

    def create(self) -> None:
        sh("ip", "netns", "add", self.parent.name)
        self.parent.sh("sysctl", "-qw", "net.ipv4.tcp_child_ehash_entries=65536")
        # `ip netns add` run under `ip netns exec` would mount the new namespace in a private mount namespace
        # only: unshare a process inside `parent` instead and name its namespace from here.
        holder = subprocess.Popen(["ip", "netns", "exec", self.parent.name, "unshare", "--net", "sleep", "30"])
        try:
            # Wait until ip and unshare have exec'd into sleep: by then the process has its new namespace.
            for _ in range(250):
                with open(f"/proc/{holder.pid}/comm") as f:
                    if f.read().strip() == "sleep":
                        break
                time.sleep(0.02)
            else:
                raise RuntimeError("could not create the client namespace")
            sh("ip", "netns", "attach", self.net.name, str(holder.pid))
        finally:
            holder.terminate()
            holder.wait()
        sh("ip", "netns", "add", self.mx.name)

    def down(self) -> None:
        super().down()
        sh("ip", "netns", "del", self.parent.name, check=False)


class Population:
    """Namespaces, server and client processes, and `grow(n)` to bring the connections to a port up to n."""

    def __init__(
        self, top: int, per_source: int, own_hash: bool = True, other: int = 0, talk_every: float = 0.0
    ) -> None:
        self.lab: Lab = BenchLab() if own_hash else Lab()
        self.talk_every = talk_every
        self.nproc = -(-(top + other) // PER_PROCESS)
        self.per_source = per_source
        self.opened = 0  # all connections, also the index of the next one's source
        self.per_port: dict[int, int] = {}
        self.servers: list[subprocess.Popen[str]] = []
        self.clients: list[subprocess.Popen[str]] = []

    def __enter__(self) -> Population:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _spawn(self, *args: str, pass_fds: tuple[int, ...] = ()) -> subprocess.Popen[str]:
        me = [sys.executable, __file__, "--per-source", str(self.per_source), "--talk-every", str(self.talk_every)]
        kw = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True, "bufsize": 1}
        return subprocess.Popen([*me, *args], pass_fds=pass_fds, **kw)  # type: ignore[call-overload, no-any-return]

    def _start(self) -> None:
        self.lab.up()
        lsocks = []
        with entered(self.lab.mx.name):
            for _ in (PORT, OTHER_PORT):
                lsocks.append(socket.socket(socket.AF_INET6, socket.SOCK_STREAM))
        try:
            for lsock, port in zip(lsocks, (PORT, OTHER_PORT), strict=True):
                lsock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                lsock.bind(("::", port))
                lsock.listen(4096)
            fds = tuple(ls.fileno() for ls in lsocks)
            for _ in range(self.nproc):
                args = ["--role", "server"] + [a for fd in fds for a in ("--fd", str(fd))]
                self.servers.append(self._spawn(*args, pass_fds=fds))
        finally:
            for lsock in lsocks:
                lsock.close()
        for _ in range(self.nproc):
            self.clients.append(self._spawn("--role", "clients", "--ns", self.lab.net.name))

    def grow(self, n: int, port: int = PORT, timeout: float = 120.0) -> None:
        t0 = time.monotonic()
        want = n - self.per_port.get(port, 0)
        share = -(-want // self.nproc)
        busy = []
        for c in self.clients:
            k = min(share, want)
            if k > 0:
                assert c.stdin is not None
                c.stdin.write(f"add {self.opened} {k} {port}\n")
                self.opened += k
                want -= k
                self.per_port[port] = self.per_port.get(port, 0) + k
                busy.append(c)
        for c in busy:
            assert c.stdout is not None
            if not c.stdout.readline():
                raise RuntimeError("a client process failed")
        # Wait for the servers to accept them all: the kernel shows them ESTABLISHED either way, but an
        # unaccepted connection sits in the listener's accept queue.
        while True:
            held = 0
            for srv in self.servers:
                assert srv.stdin is not None and srv.stdout is not None
                srv.stdin.write("count\n")
                held += int(srv.stdout.readline().split()[1])
            if held >= self.opened:
                return
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"servers accepted {held} of {self.opened}")
            time.sleep(0.05)

    def close(self) -> None:
        procs = self.servers + self.clients
        try:
            for p in procs:
                if p.stdin:
                    p.stdin.close()
            for p in procs:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        finally:
            self.lab.down()


def meminfo(key: str) -> int:
    """A /proc/meminfo value in bytes (host-wide)."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def memory_note(pop: Population, avail_before: int) -> str:
    """What holding the connections costs: the helper processes' RSS and the host's memory that went."""
    rss = 0
    for p in pop.servers + pop.clients:
        with contextlib.suppress(OSError), open(f"/proc/{p.pid}/status") as f:
            rss += next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    used = avail_before - meminfo("MemAvailable")
    # /proc/net/sockstat's TCP "alloc" (sockets) and "mem" (pages of socket buffers) are host-wide counters.
    with open("/proc/net/sockstat") as f:
        tcp = next((line.split() for line in f if line.startswith("TCP:")), [])
    fields = dict(zip(tcp[1::2], tcp[2::2], strict=False))
    buffers = int(fields.get("mem", "0")) * os.sysconf("SC_PAGE_SIZE")
    return (
        f"memory: {len(pop.servers) + len(pop.clients)} helper processes {rss / 2**20:,.0f} MB RSS; "
        f"host MemAvailable down {used / 2**20:,.0f} MB since before the set-up; host TCP sockets "
        f"{fields.get('alloc', '?')}, their buffers {buffers / 2**20:,.0f} MB"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sockets", type=int, nargs="+", default=[20000], help="socket counts to measure at")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--per-source", type=int, default=1, help="connections per source address")
    ap.add_argument(
        "--other-sockets", type=int, default=0, help=f"also hold this many connections on port {OTHER_PORT}"
    )
    ap.add_argument(
        "--shared-hash", action="store_true", help="clients share the host's established hash (tests/netns.py Lab)"
    )
    ap.add_argument("--talk-every", type=float, default=0.0, help=argparse.SUPPRESS)  # bench_daemon's sessions
    ap.add_argument("--role", choices=["server", "clients"], help=argparse.SUPPRESS)
    ap.add_argument("--ns", help=argparse.SUPPRESS)
    ap.add_argument("--fd", type=int, action="append", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "server":
        run_server(args.fd, PER_PROCESS, answer=args.talk_every > 0)
        return
    if args.role == "clients":
        run_clients(args.ns, PER_PROCESS, args.per_source, args.talk_every)
        return
    if os.geteuid() != 0:
        sys.exit("bench_observer: needs root (network namespaces)")
    # source_address() has 64,000 IPv4 sources (198.18.0-255.1-250) for three in four connections.
    top = -(-(max(args.sockets) + args.other_sockets) // args.per_source)
    if top - top // 4 > 64_000:
        sys.exit(f"bench_observer: {top:,} sources needed, the bot ranges give at most 85,333")

    print(f"machine: {machine()}")
    print(f"command: {' '.join(['.venv/bin/python', *sys.argv])}")
    print(
        f"{args.per_source} connection(s) per source address; client namespace with its own established hash: ", end=""
    )
    print("no" if args.shared_hash else "yes")
    results: dict[int, dict[str, float]] = {}
    avail_before = meminfo("MemAvailable")
    with Population(max(args.sockets), args.per_source, not args.shared_hash, args.other_sockets) as pop:
        if args.other_sockets:
            pop.grow(args.other_sockets, OTHER_PORT)
            print(f"{args.other_sockets} connections held on port {OTHER_PORT}, which the observer must skip")
        for n in sorted(set(args.sockets)):
            t0 = time.monotonic()
            pop.grow(n)
            print(f"\n{n} sockets open ({time.monotonic() - t0:.1f} s to set up); medians of {args.reps} runs:")
            print(memory_note(pop, avail_before))
            res = measure(pop.lab.mx.name, n, args.reps)
            results[n] = res
            for name, ms in res.items():
                print(f"  {name:34s} {ms:8.1f} ms")
            print(f"  ours/ss = {res['govern scan'] / res['ss -Htni']:.2f}")
        # Last, SOCK_DESTROY of every one of them: the sources are all inside these two prefixes.
        with entered(pop.lab.mx.name):
            diag = SockDiag()
        try:
            t0 = time.perf_counter()
            gone = diag.destroy([Prefix.parse("198.18.0.0/15"), Prefix.parse("2001:db8:bad::/48")], frozenset({PORT}))
            took = (time.perf_counter() - t0) * 1000
            left = diag.scan(ScanOptions(frozenset({PORT}))).sockets
        finally:
            diag.close()
        print(f"\ndestroy: {gone} sockets in {took:.1f} ms (dump + {-(-gone // 2048)} batched requests); {left} left")

    names = list(next(iter(results.values())))
    print("\n| sockets | " + " | ".join(names) + " | ours/ss |")
    print("|---:|" + "---:|" * (len(names) + 1))
    for n, res in results.items():
        cells = " | ".join(f"{res[k]:.1f}" for k in names)
        print(f"| {n:,} | {cells} | {res['govern scan'] / res['ss -Htni']:.2f} |")


if __name__ == "__main__":
    main()
