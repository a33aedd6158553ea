"""What a generator needs of the machine it runs on: the refusal to run outside a lab namespace, an open-files
limit sized for its plan, client sockets bound to a lab source, and short, stable names for why a socket failed."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import resource
import socket

from govern_lab.traffic.options import TrafficError
from govern_lab.traffic.sources import family

# Linux's IP_BIND_ADDRESS_NO_PORT (Python < 3.12 lacks the name): the port is chosen at connect() from the whole
# 4-tuple, so thousands of connections from one source address do not exhaust bind()'s per-address port space.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
# Recent kernels (6.18 here) give the initial network namespace this fixed inode (PROC_NET_INIT_INO); namespaces
# made later get inodes from 0xF0000000 up, so it never names a lab namespace.
_INIT_NET_INO = 0xEFFFFFF9
_NETNS_DIRS = ("/run/netns", "/var/run/netns")


def check_namespace() -> str:
    """The name of the `ip netns` namespace this thread is in; refuses the initial namespace and any unnamed one.

    The lab's addresses are routed only inside the lab: from the host's own namespace, traffic to 203.0.113.25
    would follow the default route out of the machine.
    """
    me = os.stat("/proc/thread-self/ns/net")
    if me.st_ino == _INIT_NET_INO:
        raise TrafficError("refusing to run in the host's network namespace: run inside a lab namespace")
    with contextlib.suppress(OSError):
        init = os.stat("/proc/1/ns/net")
        if (init.st_dev, init.st_ino) == (me.st_dev, me.st_ino):
            raise TrafficError("refusing to run in PID 1's network namespace: run inside a lab namespace")
    for d in _NETNS_DIRS:
        with contextlib.suppress(OSError):
            for name in sorted(os.listdir(d)):
                with contextlib.suppress(OSError):
                    st = os.stat(os.path.join(d, name))
                    if (st.st_dev, st.st_ino) == (me.st_dev, me.st_ino):
                        return name
    raise TrafficError("refusing to run outside a namespace made with `ip netns add` (ip netns exec NS ...)")


def raise_nofile(needed: int) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; refuse a plan that needs more descriptors than that."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and needed > hard:
        raise TrafficError(f"this needs about {needed} open sockets; the hard limit on open files is {hard}")
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return int(resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def client_socket(src: str, dst: str) -> socket.socket:
    s = socket.socket(socket.AF_INET6 if family(dst) == 6 else socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setblocking(False)
        s.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        s.bind((src, 0))
    except BaseException:
        s.close()
        raise
    return s


def failure_reason(exc: BaseException) -> str:
    """A short, stable name for why a connection failed (the per-reason counts must aggregate)."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return "reset"
    if isinstance(exc, asyncio.IncompleteReadError | EOFError):
        return "closed"
    if isinstance(exc, OSError) and exc.errno:
        return errno.errorcode.get(exc.errno, str(exc.errno)).lower()
    return type(exc).__name__
