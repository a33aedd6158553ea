"""The lab's MTA: installing Debian's Postfix without ever starting or configuring the host's mail system, and
running a private Postfix instance (its own config, queue, data and log under a work directory) inside the lab's
mx namespace, listening on the MX addresses and discarding every message it accepts.

The instance keeps Postfix's defaults where they decide how a flood hurts (`smtpd_timeout` of 300 s, or 10 s once
every smtpd process is busy: Postfix's own stress-adaptive behaviour; anvil's 50 sessions per client) except
`default_process_limit`, which is small so that slot exhaustion shows within seconds (it is also the listen backlog
of the smtp service). It never looks anything up in DNS and relays for nobody.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

from govern_lab.addresses import MX_ADDRS, TRUSTED_RANGES
from govern_lab.topology import NETNS_DIR, Lab, LabError

POLICY_RC_D = "/usr/sbin/policy-rc.d"
MASTER = "/usr/lib/postfix/sbin/master"
DAEMON_DIR = "/usr/lib/postfix/sbin"
RUN_DIR = "/run/govern-lab"
LAB_DOMAIN = "lab.test"
HOSTNAME = "mx.lab.test"
_APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "APT_LISTCHANGES_FRONTEND": "none"}
_SENT = re.compile(r" postfix/\w+\[\d+\]: ([0-9A-Za-z]+): to=<[^>]*>.* status=sent ")


# -- installing


def install() -> None:
    """Install Debian's postfix unless it is there; never start it or configure the host's mail system."""
    before = root_masters()
    if not _installed():
        _apt_install()
    started = root_masters() - before
    if started:
        # Not ours to stop (whatever started it, it was not this module), but the lab must not look like it ran.
        raise LabError(f"a Postfix master appeared in the root network namespace during install: pids {started}")


def _installed() -> bool:
    res = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", "postfix"], capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    return res.returncode == 0 and res.stdout.strip() == "install ok installed" and os.path.exists(MASTER)


def _apt(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        ["apt-get", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **_APT_ENV},
        stdin=subprocess.DEVNULL,
        timeout=900,
    )
    if check and res.returncode != 0:
        raise LabError(f"apt-get {' '.join(args)} failed ({res.returncode}): {res.stderr.strip()[-2000:]}")
    return res


def _apt_install() -> None:
    apt_install("postfix", "postfix postfix/main_mailer_type select No configuration\n")


def apt_install(package: str, preseed: str = "") -> None:
    """Install a Debian package for the lab with its debconf answers `preseed`, starting no service, and refusing if
    it would remove anything (postfix conflicts with every other MTA: the host's own mail system would go)."""
    plan = _apt("install", "-s", "--no-install-recommends", package, check=False)
    if plan.returncode != 0:  # a fresh machine has no package lists yet
        _apt("update", "-q")
        plan = _apt("install", "-s", "--no-install-recommends", package)
    removed = [line.split()[1] for line in plan.stdout.splitlines() if line.startswith("Remv ")]
    if removed:
        raise LabError(f"installing {package} would remove {', '.join(removed)}; not touching the host's packages")
    if preseed:
        subprocess.run(["debconf-set-selections"], input=preseed, text=True, check=True, capture_output=True)
    with no_service_starts():
        _apt("install", "-y", "-q", "--no-install-recommends", package)


@contextlib.contextmanager
def no_service_starts() -> Iterator[None]:
    """While inside, invoke-rc.d and deb-systemd-invoke start no service (policy-rc.d exit 101: action forbidden);
    whatever policy-rc.d was there before comes back afterwards."""
    path = Path(POLICY_RC_D)
    link: str | None = None
    saved: bytes | None = None
    mode, times = 0o755, (0, 0)
    if path.is_symlink():
        link = os.readlink(path)
    elif path.exists():
        st = path.stat()
        saved, mode, times = path.read_bytes(), st.st_mode & 0o7777, (st.st_atime_ns, st.st_mtime_ns)
    tmp = path.with_name(f".policy-rc.d.govern-{os.getpid()}")
    tmp.write_text("#!/bin/sh\n# govern lab: installing packages, start no service\nexit 101\n")
    tmp.chmod(0o755)
    os.replace(tmp, path)
    try:
        yield
    finally:
        if link is not None:
            path.unlink(missing_ok=True)
            os.symlink(link, path)
        elif saved is not None:
            tmp.write_bytes(saved)
            tmp.chmod(mode)
            os.utime(tmp, ns=times)
            os.replace(tmp, path)
        else:
            path.unlink(missing_ok=True)


def _netns_inode(pid: int | str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def _processes() -> Iterator[tuple[int, str, str]]:
    """(pid, executable, working directory) of every process this module may look at."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            exe = os.readlink(f"/proc/{entry}/exe")
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:  # a kernel thread, or gone meanwhile
            continue
        yield int(entry), exe.removesuffix(" (deleted)"), cwd.removesuffix(" (deleted)")


def root_masters() -> set[int]:
    """Postfix masters running in the root network namespace (PID 1's), whoever started them."""
    root = _netns_inode(1)
    return {pid for pid, exe, _ in _processes() if exe == MASTER and _netns_inode(pid) == root}


# -- the lab's instance


MAIN_CF = """\
# Written by govern_lab.postfix for the flood lab; rewritten at every start.
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
maillog_file = {log}
maillog_file_prefixes = {workdir}
enable_long_queue_ids = yes

myhostname = {hostname}
mydomain = {domain}
myorigin = $myhostname
inet_interfaces = {mx4}, [{mx6}]
inet_protocols = all
default_process_limit = {process_limit}

# No DNS anywhere: the lab has no resolver and must not reach one.
smtpd_peername_lookup = no
disable_dns_lookups = yes
smtp_dns_support_level = disabled
smtp_host_lookup = native
lmtp_host_lookup = native

# Accept any local part @{domain}, relay for nobody, and throw every message away.
mynetworks = 127.0.0.0/8 [::1]/128
mydestination =
relay_domains = {domain}
relay_recipient_maps =
smtpd_relay_restrictions = reject_unauth_destination
smtpd_recipient_restrictions = reject_unauth_destination
default_transport = discard:lab
relay_transport = discard:lab
local_transport = discard:lab
virtual_transport = discard:lab
alias_maps =
alias_database =
local_recipient_maps =
biff = no
readme_directory = no
"""

# No postscreen, no chroot (the queue is private anyway), no pickup (nothing is submitted locally), and postlogd
# so that maillog_file works without syslog.
MASTER_CF = """\
# Written by govern_lab.postfix for the flood lab; rewritten at every start.
smtp       inet       n - n -    - smtpd
cleanup    unix       n - n -    0 cleanup
qmgr       unix       n - n 300  1 qmgr
rewrite    unix       - - n -    - trivial-rewrite
bounce     unix       - - n -    0 bounce
defer      unix       - - n -    0 bounce
trace      unix       - - n -    0 bounce
verify     unix       - - n -    1 verify
flush      unix       n - n 1000? 0 flush
proxymap   unix       - - n -    - proxymap
proxywrite unix       - - n -    1 proxymap
showq      unix       n - n -    - showq
error      unix       - - n -    - error
retry      unix       - - n -    - error
discard    unix       - - n -    - discard
anvil      unix       - - n -    1 anvil
scache     unix       - - n -    1 scache
postlog    unix-dgram n - n -    1 postlogd
"""

# postscreen in front of smtpd (the adversary matrix): one postscreen process owns port 25 and hands clients that pass
# its tests to the smtpd processes of the `smtpd pass` service, which keep the same process limit.
POSTSCREEN_MASTER_CF = MASTER_CF.replace(
    "smtp       inet       n - n -    - smtpd\n",
    "smtp       inet       n - n -    1 postscreen\nsmtpd      pass       - - n -    - smtpd\n",
)

# The scenario's postscreen: the pregreet test only (no DNSBL: the lab has no DNS), enforced: a client that talks
# before its turn is rejected (550 at RCPT) and logged. Clients that passed are remembered in the cache.
POSTSCREEN = {
    "postscreen_greet_action": "enforce",
    "postscreen_cache_map": "btree:$data_directory/postscreen_cache",
}
# postscreen as an operator tunes it for a flood (Postfix's STRESS_README and POSTSCREEN_README): the trusted relay on
# the access list (as govern's allowlist), 5 s instead of 10 s for smtpd under stress, and a deadline per whole
# request at all times (a client cannot stretch a command line by dripping bytes). Postfix 3.7's stress defaults stay:
# one error or junk command and out, 2 s greet wait.
POSTSCREEN_TUNED = {
    **POSTSCREEN,
    "postscreen_access_list": "permit_mynetworks, cidr:$config_directory/postscreen_access.cidr",
    "smtpd_timeout": "${stress?{5}:{300}}s",
    "smtpd_per_request_deadline": "yes",
}


def _cidr_key(net: str) -> str:
    """A network as a Postfix cidr table writes it: IPv6 addresses in brackets."""
    addr, _, length = net.partition("/")
    return f"[{addr}]/{length}" if ":" in addr else net


# STARTTLS offered as every MX offers it (the matrix's tls scenarios): the lab's own self-signed certificate, made at
# the instance's start; no session cache (smtpd processes live for the run anyway).
TLS_CF = """\
smtpd_tls_cert_file = {config}/tls-cert.pem
smtpd_tls_key_file = {config}/tls-key.pem
smtpd_tls_security_level = may
smtpd_tls_session_cache_database =
"""
TLSMGR_CF = "tlsmgr     unix       - - n 1000? 1 tlsmgr\n"


# postscreen's access list: the trusted relays pass.
POSTSCREEN_ACCESS = "".join(f"{_cidr_key(net)} permit\n" for net in TRUSTED_RANGES)


class Postfix:
    """A private Postfix instance under `workdir`, run inside the lab's mx namespace (or `role`'s, another MX of the
    lab: mx2 of the fleet scenario, with its own addresses and the same settings); with no lab, in the caller's
    namespace (a lab VM that is itself the MX)."""

    def __init__(
        self,
        lab: Lab | None,
        workdir: str,
        *,
        process_limit: int = 50,
        postscreen: dict[str, str] | None = None,
        role: str = "mx",
        tls: bool = False,
    ) -> None:
        """`postscreen`: None for smtpd alone on port 25, else postscreen in front of it with these main.cf settings
        (POSTSCREEN or POSTSCREEN_TUNED). `tls`: smtpd offers STARTTLS, with a self-signed certificate."""
        if process_limit < 1:
            raise ValueError("process_limit must be at least 1")
        if role not in MX_ADDRS:
            raise ValueError(f"unknown MX role {role!r} (one of {', '.join(MX_ADDRS)})")
        self.role = role
        self.addrs = MX_ADDRS[role]
        self.postscreen = postscreen
        self.tls = tls
        self.lab = lab
        self.workdir = os.path.abspath(workdir)
        self.config_dir = os.path.join(self.workdir, "etc")
        self.queue_dir = os.path.join(self.workdir, "queue")
        self.data_dir = self._data_dir()
        self.log_path = os.path.join(self.workdir, "maillog")
        self.process_limit = process_limit
        self._log_offset = 0
        self._sent: set[str] = set()

    def start(self, timeout: float = 30.0) -> None:
        """Start the instance in the lab's mx namespace and wait until both MX addresses answer with a banner."""
        pid = self._master_pid()
        if pid is not None and _netns_inode(pid) == self._netns():
            self._wait_banner(timeout)
            return
        # A master of this work directory outside the current mx namespace (an earlier lab of the same tag that
        # went down under it) holds the queue's lock; it is this instance's own, so stop it first.
        self.stop()
        self._write_config()
        # The master runs on in the background: its stdio must not be a pipe somebody waits to see closed.
        with open(os.path.join(self.workdir, "postfix-start.out"), "ab") as out:
            res = subprocess.run(
                [*self._in_mx(), "postfix", "-c", self.config_dir, "start"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                timeout=timeout,
            )
        if res.returncode != 0:
            raise LabError(f"postfix -c {self.config_dir} start failed ({res.returncode}): {self._tail()}")
        self._wait_banner(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the instance and wait until none of its processes is left; nothing to do if it is not running."""
        pid = self._master_pid()
        if pid is not None:
            # `postfix stop` only signals the master; it needs no namespace, which may already be gone.
            gone = self.lab is not None and _ns_file_inode(self.lab.ns(self.role)) is None
            res = subprocess.run(
                [*([] if gone else self._in_mx()), "postfix", "-c", self.config_dir, "stop"],
                capture_output=True,
                stdin=subprocess.DEVNULL,
                timeout=timeout,
            )
            if res.returncode != 0 or not _wait_gone({pid}, timeout):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                if not _wait_gone({pid}, 5):
                    raise LabError(f"postfix master {pid} of {self.workdir} did not stop")
        # The master ends its children as it exits; one stuck in a system call gets a moment, then SIGKILL.
        left = self._own_processes()
        if left and not _wait_gone(left, 5):
            for p in self._own_processes():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)
            _wait_gone(left, 5)
        if self.data_dir.startswith(RUN_DIR + "/"):
            shutil.rmtree(os.path.dirname(self.data_dir), ignore_errors=True)
            with contextlib.suppress(OSError):  # another instance's may still be there
                os.rmdir(RUN_DIR)

    def delivered(self) -> int:
        """Messages delivered (to the discard transport) since the log began."""
        try:
            with open(self.log_path, "rb") as f:
                if os.fstat(f.fileno()).st_size < self._log_offset:  # a new log: count afresh
                    self._log_offset, self._sent = 0, set()
                f.seek(self._log_offset)
                chunk = f.read()
        except FileNotFoundError:
            return len(self._sent)
        end = chunk.rfind(b"\n") + 1  # a line still being written is read next time
        self._log_offset += end
        for m in _SENT.finditer(chunk[:end].decode("utf-8", "replace")):
            self._sent.add(m.group(1))
        return len(self._sent)

    # -- internals

    def _write_config(self) -> None:
        self.data_dir = self._data_dir()
        # Postfix's daemons run as the postfix user; a private temp dir (or a umask of 077) would shut them out.
        mine = [self.workdir, self.config_dir, self.queue_dir, os.path.dirname(self.data_dir)]
        if self.data_dir.startswith(RUN_DIR + "/"):
            mine.insert(0, RUN_DIR)
        for d in mine:
            os.makedirs(d, exist_ok=True)
            os.chmod(d, 0o755)
        main = MAIN_CF.format(
            queue=self.queue_dir,
            data=self.data_dir,
            log=self.log_path,
            workdir=self.workdir,
            hostname=HOSTNAME if self.role == "mx" else f"{self.role}.{LAB_DOMAIN}",
            domain=LAB_DOMAIN,
            mx4=self.addrs[0],
            mx6=self.addrs[1],
            process_limit=self.process_limit,
        )
        # Postfix re-reads a file modified within the last second every 300 ms until it "cools down" (it might
        # be half written); ours are complete when renamed into place, so they are dated a minute back.
        cool = time.time() - 60
        master = MASTER_CF
        files = [("main.cf", main)]
        if self.postscreen is not None:
            files[0] = ("main.cf", main + "".join(f"{k} = {v}\n" for k, v in self.postscreen.items()))
            master = POSTSCREEN_MASTER_CF
            files.append(("postscreen_access.cidr", POSTSCREEN_ACCESS))
        if self.tls:
            self._certificate()
            files[0] = ("main.cf", files[0][1] + TLS_CF.format(config=self.config_dir))
            master += TLSMGR_CF
        files.append(("master.cf", master))
        for name, text in files:
            path = os.path.join(self.config_dir, name)
            with open(path + ".tmp", "w") as f:
                f.write(text)
            os.chmod(path + ".tmp", 0o644)
            os.utime(path + ".tmp", (cool, cool))
            os.replace(path + ".tmp", path)

    def _certificate(self) -> None:
        """A self-signed ECDSA certificate for STARTTLS, made once per work directory (P-256: the cheapest
        handshake, for a flood of them)."""
        cert, key = (os.path.join(self.config_dir, f"tls-{n}.pem") for n in ("cert", "key"))
        if os.path.exists(cert) and os.path.exists(key):
            return
        res = subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-days", "30", "-subj", f"/CN={HOSTNAME}", "-keyout", key, "-out", cert],
            capture_output=True, stdin=subprocess.DEVNULL, timeout=30,
        )  # fmt: skip
        if res.returncode != 0:
            raise LabError(f"openssl could not make the lab's certificate: {res.stderr.decode(errors='replace')}")
        os.chmod(key, 0o600)

    def _data_dir(self) -> str:
        """workdir/data, unless the postfix user cannot reach the work directory (under /root, or pytest's 0700
        temp root): its master opens data_directory's lock as that user, while every other path it uses is opened
        as root or relative to the queue directory. Then a directory of its own under /run, per work directory."""
        if _reachable_by_postfix(os.path.dirname(self.workdir)):
            return os.path.join(self.workdir, "data")
        key = hashlib.sha256(self.workdir.encode()).hexdigest()[:16]
        return os.path.join(RUN_DIR, f"postfix-{key}", "data")

    def _in_mx(self) -> list[str]:
        return [] if self.lab is None else ["ip", "netns", "exec", self.lab.ns(self.role)]

    def _netns(self) -> int | None:
        """The network namespace the instance runs in (its inode)."""
        return _netns_inode("self") if self.lab is None else _ns_file_inode(self.lab.ns(self.role))

    def _where(self) -> str:
        return "this host" if self.lab is None else self.lab.ns(self.role)

    def _master_pid(self) -> int | None:
        """The running master of this instance: the pid file's process, if it is a master working in our queue."""
        try:
            pid = int(Path(self.queue_dir, "pid", "master.pid").read_text().split()[0])
            exe = os.readlink(f"/proc/{pid}/exe")
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except (OSError, ValueError, IndexError):  # no pid file, a stale one, or a process that is not ours
            return None
        return pid if exe == MASTER and cwd == self.queue_dir else None

    def _own_processes(self) -> set[int]:
        """Postfix programs working in this instance's queue directory (every daemon chdirs there)."""
        return {pid for pid, exe, cwd in _processes() if exe.startswith(DAEMON_DIR + "/") and cwd == self.queue_dir}

    def _wait_banner(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for addr in self.addrs:
            while True:
                try:
                    # "220-" is postscreen's teaser: it is listening, and it would hand a patient client on.
                    wait = max(0.5, deadline - time.monotonic())
                    if _banner(self.lab, addr, wait, self.role).startswith(("220 ", "220-")):
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise LabError(f"postfix in {self._where()} did not answer on {addr}:25: {self._tail()}")
                time.sleep(0.05)

    def _tail(self, lines: int = 10) -> str:
        texts = []
        for path in (self.log_path, os.path.join(self.workdir, "postfix-start.out")):
            with contextlib.suppress(OSError):
                texts += Path(path).read_text(errors="replace").splitlines()[-lines:]
        return " | ".join(texts) or "(no log)"

    def __enter__(self) -> Postfix:
        try:
            self.start()
        except BaseException:
            self.stop()  # a master that started but never answered must not outlive the lab
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _banner(lab: Lab | None, addr: str, timeout: float, role: str = "mx") -> str:
    """The first line the MTA sends on a fresh connection from inside the MX's namespace; QUITs politely."""
    with lab.entered(role) if lab is not None else contextlib.nullcontext():
        s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_STREAM)
    with s:
        s.settimeout(timeout)
        s.connect((addr, 25))
        data = b""
        while b"\n" not in data:
            chunk = s.recv(512)
            if not chunk:
                break
            data += chunk
        if data.startswith(b"220 "):  # not after postscreen's "220-" teaser: talking then is a pregreet
            with contextlib.suppress(OSError):
                s.sendall(b"QUIT\r\n")
                s.recv(512)
    return data.decode("ascii", "replace")


def pass_postscreen(lab: Lab, role: str, sources: Sequence[str], dst: str, timeout: float = 20.0) -> list[str]:
    """Have each of `sources` (addresses of client namespace `role`) pass postscreen's test once, at once: connect,
    wait out the greeting without a word until smtpd's banner, QUIT. postscreen then remembers each in its cache (a
    day, postscreen_greet_ttl), as on an MX whose regular peers have passed it before. Returns the sources that did
    not get through."""
    with lab.entered(role):
        socks = [socket.socket(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM) for a in sources]
    failed: list[str] = []

    def one(sock: socket.socket, src: str) -> None:
        with sock:
            try:
                sock.settimeout(timeout)
                sock.bind((src, 0))
                sock.connect((dst, 25))
                data = b""
                while not re.search(rb"(^|\n)220 ", data):  # past postscreen's "220-" teaser: smtpd's banner
                    chunk = sock.recv(512)
                    if not chunk:
                        raise OSError("closed before the banner")
                    data += chunk
                sock.sendall(b"QUIT\r\n")
                sock.recv(512)
            except OSError:
                failed.append(src)

    threads = [threading.Thread(target=one, args=(s, a), daemon=True) for s, a in zip(socks, sources, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 1)
    return failed


def _reachable_by_postfix(path: str) -> bool:
    """Whether the postfix user may traverse every directory from / down to `path` (which may not exist yet)."""
    try:
        pw = pwd.getpwnam("postfix")
    except KeyError:
        return False
    groups = set(os.getgrouplist(pw.pw_name, pw.pw_gid))
    parts = Path(path).parts
    for i in range(1, len(parts) + 1):
        try:
            st = os.stat(os.path.join(*parts[:i]))
        except FileNotFoundError:
            return True  # created by us, 0755
        if st.st_uid == pw.pw_uid:
            bit = stat.S_IXUSR
        elif st.st_gid in groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def _ns_file_inode(name: str) -> int | None:
    try:
        return os.stat(f"{NETNS_DIR}/{name}").st_ino
    except OSError:
        return None


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped by whoever adopted it."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rindex(")") + 2 :][:1] != "Z"


def _wait_gone(pids: set[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


if __name__ == "__main__":  # `python -m govern_lab.postfix`: what a setup script runs to install the lab's MTA
    install()


@contextlib.contextmanager
def temporary(lab: Lab, prefix: str = "govern-postfix-", *, tls: bool = False) -> Iterator[Postfix]:
    """A Postfix in the lab's MX namespace from a fresh temporary directory (installed first if need be), stopped and
    its directory removed afterwards, also when the caller fails; with `tls`, offering STARTTLS."""
    import tempfile

    install()
    # mkdtemp's directory is 0700: the postfix user cannot reach it, which the instance has to cope with.
    work = tempfile.mkdtemp(prefix=prefix)
    pf = Postfix(lab, os.path.join(work, "pf"), tls=tls)
    try:
        pf.start()
        yield pf
    finally:
        try:
            pf.stop()
        finally:
            shutil.rmtree(work, ignore_errors=True)
