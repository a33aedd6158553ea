"""Benchmark: bringing 100k blocks back after a restart -- the store's load and the nftables backend's setup.

    .venv/bin/python bench/bench_restore.py [--blocks 100000] [--reps 5] [--base OTHER_TREE] [--daemon-rounds 3]

Needs root. Everything happens in a throwaway network namespace (removed at the end, also on failure) and a
temporary state directory; the root namespace's firewall is never touched. The blocks are what the daemon would
hold after a flood: three in four IPv4 hosts from 198.18.0.0/15, one in four IPv6 /64s from 2001:db8:bad::/48
(docs/testing.md), each with its own reason and an expiry between 10 min and 24 h from now.

What the daemon does at start-up, step by step, each timed:
1. Store.load(): the State from SQLite (written first with Store.save of one Plan of BLOCK actions, also timed).
2. NftBackend(...).setup(config, allow, state, now): the ruleset through libnftables (table, sets, chain, rules
   converged in place), the allow and block/throttle sets dumped, and what the kernel lacks added in one netlink
   transaction. Three starting points:
   a. cold start: no table in the kernel (after a reboot): all N blocks restored;
   b. warm restart: the kernel still holds all of them (the daemon was restarted): nothing may be added;
   c. warm restart after losing 1% (e.g. an operator deleted some by hand): only those are added.
   Each setup's own parts (ruleset, dumps, commit) are timed through wrappers, and what it committed and adopted
   is checked.
3. release_allowlisted(state, policy): the start-up pass over every block against the allowlist (pure).
For diagnosis, also: Store.load with the cyclic GC held off and SQLite's fetch alone; and, with the block sets
full, the ruleset's `add element ... ports` line alone against the same ports declared with the set.
Cold and warm are repeated `--reps` times (the table deleted before each cold start); medians are reported.
As the daemon does (govern.process), the loaded state is frozen (gc.freeze) before the setup.

With `--base OTHER_TREE` (a checkout of govern before a change), side by side in the same run, rounds alternating
which goes first:
- Store.load of the same database by each tree, `--reps` times, each in a fresh process that has imported the
  daemon's modules first (govern.process), as `govern run` has when it loads;
- with `--daemon-rounds N` (default 3; 0 for none): the whole daemon, `govern run` of each tree in the namespace
  from its own copy of the database, timed from the process's start to the first answer on its control socket (it
  answers after the start-up and the first tick), the kernel holding the blocks already (a restart; one run of
  each first, not counted, puts them there). The MTA's networks are not read (`allow.mta_networks = false`): on a
  host without Postfix's main.cf, postconf alone takes 1 s to fail, on both trees.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import machine  # noqa: E402
from govern import config as govern_config  # noqa: E402
from govern.addr import Prefix, PrefixSet, parse_full  # noqa: E402
from govern.config import Config  # noqa: E402
from govern.core.decide import release_allowlisted  # noqa: E402
from govern.model import Action, ActionKind, Plan, State  # noqa: E402
from govern.nft.backend import NftBackend  # noqa: E402
from govern.nft.libnft import Nft  # noqa: E402
from govern.nft.netlink import ElemOp  # noqa: E402
from govern.nft.ruleset import INTERVAL_SETS, part, parts  # noqa: E402
from govern.store import Store  # noqa: E402
from tests.netns import Netns, new_name, sh  # noqa: E402

TARGET_S = 1.0  # docs/targets.md: restart with 100k active blocks, reconciled in <= 1 s
V4_BASE = Prefix.parse("198.18.0.0").value
V4_SPAN = 1 << 17  # 198.18.0.0/15
V6_BASE = Prefix.parse("2001:db8:bad::").value
V6_SPAN = 1 << 16  # /64s in 2001:db8:bad::/48
ALLOW = ["192.0.2.0/24", "2001:db8:2::/48"]


def block_plan(n: int, now: float) -> Plan:
    rng = random.Random(25)
    n6 = n // 4
    n4 = n - n6
    if n4 > V4_SPAN or n6 > V6_SPAN:
        sys.exit(f"bench_restore: the bot ranges hold {V4_SPAN + V6_SPAN} sources, not {n}")
    prefixes = [Prefix(4, V4_BASE + i, 32) for i in rng.sample(range(V4_SPAN), n4)]
    prefixes += [Prefix(6, V6_BASE + (i << 64), 64) for i in rng.sample(range(V6_SPAN), n6)]
    rng.shuffle(prefixes)
    actions = []
    for i, p in enumerate(prefixes):
        why = f"holds {21 + i % 40} connections, {i % 21} idle (limit 20); still over after throttling"
        actions.append(Action(ActionKind.BLOCK, p, why, until=now + rng.uniform(600, 86400), offences=1 + i % 3))
    return Plan(tuple(actions))


class Timed:
    """Wraps a bound method of an object, summing the seconds spent in it and recording its arguments."""

    def __init__(self, obj: object, name: str) -> None:
        self.inner: Callable[..., Any] = getattr(obj, name)
        self.seconds = 0.0
        self.calls: list[tuple[Any, ...]] = []
        setattr(obj, name, self)

    def __call__(self, *args: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self.inner(*args, **kw)
        finally:
            self.seconds += time.perf_counter() - t0
            self.calls.append(args)


def setup_once(ns: Netns, cfg: Config, state: State, now: float) -> dict[str, float]:
    """One start-up of the backend in `ns`; its time, its parts', and what it committed and adopted."""
    with ns.entered():
        backend = NftBackend()
    try:
        run = Timed(backend.nft, "run")
        dump = Timed(backend.nl, "dump_set")
        commit = Timed(backend.nl, "commit")
        allow = cfg.policy().allow.members()
        t0 = time.perf_counter()
        adopted = backend.setup(cfg.firewall(), allow, state, now)
        took = time.perf_counter() - t0
    finally:
        backend.close()
    # Block and throttle elements only: the allowlist and the wave's gate are committed through the same socket.
    elems = sum(1 for ops, *_ in commit.calls for op in ops if op.set.startswith(("block", "throttle", "tight")))
    return {
        "setup": took,
        "ruleset": run.seconds,
        "dumps": dump.seconds,
        "commit": commit.seconds,
        "committed": elems,
        "adopted": len(adopted.actions),
    }


def kernel_count(ns: Netns) -> int:
    from govern.nft.netlink import NftNetlink

    with ns.entered():
        nl = NftNetlink()
    with nl:
        return sum(len(nl.dump_set(s)) for v in (4, 6) for s in parts("block", v))


# One Store.load in a fresh process of the tree given, after the daemon's imports; then, the state frozen or not,
# what the next allocations pay for the collector's catching up with it: as many objects kept as there are blocks
# (what the setup's set dumps build next). argv = tree, state_dir, "freeze" or "".
LOAD_WORKER = """
import json, sys, time, gc
sys.path.insert(0, sys.argv[1])
import govern
if not (govern.__file__ or "").startswith(sys.argv[1]):
    raise SystemExit(f"govern from {govern.__file__}, not {sys.argv[1]}")
import govern.process
from govern.addr import Prefix
from govern.store import Store
store = Store(sys.argv[2])
t0 = time.perf_counter()
state = store.load()
t1 = time.perf_counter()
if sys.argv[3] == "freeze":
    gc.freeze()
kept = {Prefix(4, i, 32): [i] for i in range(len(state.blocks))}
t2 = time.perf_counter()
print(json.dumps({"load": t1 - t0, "after": t2 - t1, "blocks": len(state.blocks)}))
"""


def compare_loads(
    sides: dict[str, tuple[str, bool]], db: str, reps: int, n: int
) -> dict[str, list[tuple[float, float]]]:
    """Store.load of the same database by each side (a tree, and whether the state is frozen after it), one fresh
    process per load, the order turning each round: (load, the next allocations) seconds, each."""
    took: dict[str, list[tuple[float, float]]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(len(sides)):
            os.makedirs(f"{tmp}/{i}")
            shutil.copy(db, f"{tmp}/{i}/state.db")
        for rnd in range(reps):
            order = list(enumerate(sides))
            for i, side in order[rnd % len(order) :] + order[: rnd % len(order)]:
                tree, freeze = sides[side]
                out = subprocess.run(
                    [sys.executable, "-c", LOAD_WORKER, tree, f"{tmp}/{i}", "freeze" if freeze else ""],
                    capture_output=True,
                    text=True,
                    check=True,
                    cwd=tree,
                )
                got = json.loads(out.stdout)
                if got["blocks"] != n:
                    raise RuntimeError(f"{side}: the store gave back {got['blocks']} blocks of {n}")
                took[side].append((got["load"], got["after"]))
    return took


def daemon_start(ns: Netns, tree: str, db: str, tmp: str) -> tuple[float, str]:
    """`govern run` of `tree` in `ns` with a copy of `db`: seconds from its start to its first answer, and what it
    logged about its start-up."""
    from govern.control import call
    from govern.errors import DaemonUnavailable

    here = tempfile.mkdtemp(dir=tmp)
    os.makedirs(f"{here}/state")
    shutil.copy(db, f"{here}/state/state.db")
    cfg = f"{here}/govern.toml"
    Path(cfg).write_text(
        f"[allow]\ncidrs = [{', '.join(repr(c) for c in ALLOW)}]\nmta_networks = false\n"
        f'[daemon]\nstate_dir = "{here}/state"\nsocket = "{here}/run/govern.sock"\n'
    )
    sock = f"{here}/run/govern.sock"
    with open(f"{here}/log", "wb") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns.name, sys.executable, "-m", "govern", "run", "--config", cfg],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tree,  # `-m govern` takes the tree it runs in
            env={**os.environ, "PYTHONPATH": tree},
        )
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{tree}: the daemon exited: {Path(f'{here}/log').read_text()[-2000:]}")
            with contextlib.suppress(DaemonUnavailable):
                if call(sock, {"cmd": "ping"}, timeout=1).get("ok"):
                    break
            time.sleep(0.01)
        took = time.perf_counter() - t0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, 15)  # ip netns exec execs the command: this PID is govern itself
            proc.wait(30)
    said = re.search(r"started in .*\)", Path(f"{here}/log").read_text())
    shutil.rmtree(here)
    return took, said.group(0) if said else ""


def compare_daemons(ns: Netns, trees: dict[str, str], db: str, rounds: int) -> dict[str, list[tuple[float, str]]]:
    runs: dict[str, list[tuple[float, str]]] = {side: [] for side in trees}
    with tempfile.TemporaryDirectory() as tmp:
        for side in trees:  # not counted: each once, so that every counted start finds the blocks in the kernel
            daemon_start(ns, trees[side], db, tmp)
        for rnd in range(rounds):
            for side in list(trees)[:: 1 if rnd % 2 == 0 else -1]:
                runs[side].append(daemon_start(ns, trees[side], db, tmp))
    return runs


def prefix_costs(store: Store) -> dict[str, float]:
    """Seconds to make the blocks' prefixes alone: through ipaddress (parse_full, as before the fast path), as
    Prefix.parse reads govern's own text now, and from packed bytes (what a BLOB column would give)."""
    texts = [t for (t,) in store.db.execute("SELECT prefix FROM blocks")]
    packed = [(p.packed(), p.length) for p in map(Prefix.parse, texts)]
    took = {}
    runs: list[tuple[str, Callable[[], list[Prefix]]]] = [
        ("parse_full", lambda: [parse_full(t) for t in texts]),
        ("parse", lambda: [Prefix.parse(t) for t in texts]),
        ("packed", lambda: [Prefix(4 if len(b) == 4 else 6, int.from_bytes(b), ln) for b, ln in packed]),
    ]
    for key, parse_all in runs:
        t0 = time.perf_counter()
        parse_all()
        took[key] = time.perf_counter() - t0
    return took


def spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} s ({min(xs):.2f}-{max(xs):.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--base", help="another govern tree, whose load and daemon start are measured alongside")
    ap.add_argument("--daemon-rounds", type=int, default=3)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_restore: needs root (network namespaces)")
    n = args.blocks
    print(f"machine: {machine()}")
    print(f"command: {' '.join(['.venv/bin/python', *sys.argv])}")
    now = time.time()
    plan = block_plan(n, now)
    r: dict[str, float] = {}
    ns = Netns(new_name("rst"))
    sh("ip", "netns", "add", ns.name)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = govern_config.from_mapping(
                {"daemon": {"state_dir": tmp, "socket": f"{tmp}/govern.sock"}, "allow": {"cidrs": ALLOW}}
            )
            store = Store(cfg["daemon"]["state_dir"])
            try:
                t0 = time.perf_counter()
                store.save(plan, now)
                r["save"] = time.perf_counter() - t0
                del plan
                t0 = time.perf_counter()
                rows = (
                    store.db.execute("SELECT * FROM blocks").fetchall()
                    + store.db.execute("SELECT * FROM offenders").fetchall()
                )
                r["fetch"] = time.perf_counter() - t0
                del rows
                r |= prefix_costs(store)
                store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the copies below are then the whole store
                db = store.path
                # Store.load, in fresh processes as the daemon loads it; this tree's and, if given, the base's.
                trees = {"this": str(ROOT)} | ({"base": str(Path(args.base).resolve())} if args.base else {})
                # This tree as govern.process runs it (the state frozen after the load), and unfrozen; the base
                # as it was (no freeze).
                sides = {"this": (trees["this"], True), "this, not frozen": (trees["this"], False)}
                if args.base:
                    sides["base"] = (trees["base"], False)
                loads = compare_loads(sides, db, args.reps, n)
                # The state the setups below restore, read here as the daemon reads it and then frozen as
                # govern.process freezes it (the collector never walks it again).
                state = store.load()
                gc.freeze()
            finally:
                store.close()
            r["load"] = statistics.median(x for x, _ in loads["this"])
            if len(state.blocks) != n:
                raise RuntimeError(f"the store gave back {len(state.blocks)} blocks of {n}")
            print(
                f"Store.save of {n:,} BLOCK actions: {r['save']:.2f} s; SQLite's rows alone, blocks and offenders: "
                f"{r['fetch']:.2f} s; the {n:,} prefixes alone (GC on): {r['parse_full']:.3f} s through ipaddress, "
                f"{r['parse']:.3f} s by Prefix.parse, {r['packed']:.3f} s from packed bytes"
            )
            for side, pairs in loads.items():
                each = ", ".join(f"{x:.2f}" for x, _ in pairs)
                print(
                    f"Store.load of {n:,} blocks, {side} ({sides[side][0]}): {spread([x for x, _ in pairs])} "
                    f"(each: {each}); then {n:,} objects kept: {spread([y for _, y in pairs])}"
                )
            if "base" in loads:
                for i, what in enumerate(("Store.load", f"then {n:,} objects kept")):
                    ratio = statistics.median(p[i] for p in loads["this"]) / statistics.median(
                        p[i] for p in loads["base"]
                    )
                    print(f"{what}, this tree / base: {ratio:.2f}")

            # The daemon's policy holds this host's addresses, which the guard checks every block against: this
            # machine's (host_addresses, as govern.wiring reads them), and for comparison none.
            from govern.export.local import host_addresses

            own = host_addresses()[0]
            for key, policy in (("release_none", cfg.policy()), ("release", replace(cfg.policy(), own=PrefixSet(own)))):
                times = []
                for _ in range(args.reps):
                    t0 = time.perf_counter()
                    released = release_allowlisted(state, policy)
                    times.append(time.perf_counter() - t0)
                    assert not released
                r[key] = statistics.median(times)

            runs: dict[str, list[dict[str, float]]] = {"cold": [], "warm": [], "lost": []}
            for _ in range(args.reps):
                ns.sh("nft", "delete", "table", "inet", "govern", check=False)
                runs["cold"].append(setup_once(ns, cfg, state, now))
                if kernel_count(ns) != n:
                    raise RuntimeError("the cold start did not restore every block")
                runs["warm"].append(setup_once(ns, cfg, state, now))
            # c. 1% of them gone from the kernel (deleted by hand), then a restart.
            lost = random.Random(3).sample(sorted(state.blocks), n // 100)
            with ns.entered():
                from govern.nft.netlink import NftNetlink

                nl = NftNetlink()
            with nl:
                nl.commit([ElemOp(False, part("block", p), p) for p in lost], interval_sets=INTERVAL_SETS)
            runs["lost"].append(setup_once(ns, cfg, state, now))
            if kernel_count(ns) != n:
                raise RuntimeError("the restart did not bring the lost blocks back")
            # Where the ruleset's time goes with the block sets full: the port list's `add element` makes
            # libnftables read every set of the table first; the same list declared with the set does not.
            with ns.entered():
                nft = Nft()
            try:
                t0 = time.perf_counter()
                nft.run("add element inet govern ports { 25, 465, 587 }\n")
                r["ports_add"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                nft.run(
                    "flush set inet govern ports\n"
                    "add set inet govern ports { type inet_service; elements = { 25, 465, 587 }; }\n"
                )
                r["ports_decl"] = time.perf_counter() - t0
            finally:
                nft.close()
            daemons = compare_daemons(ns, trees, db, args.daemon_rounds) if args.daemon_rounds else {}
    finally:
        sh("ip", "netns", "del", ns.name, check=False)

    expect = {"cold": n, "warm": 0, "lost": n // 100}
    for kind, rs in runs.items():
        for one in rs:
            if one["committed"] != expect[kind] or one["adopted"]:
                raise RuntimeError(f"{kind}: committed {one['committed']}, adopted {one['adopted']}; expected {expect}")
    med = {k: {f: statistics.median(x[f] for x in rs) for f in rs[0]} for k, rs in runs.items()}
    labels = {
        "cold": f"a. cold start: empty kernel, {n:,} restored",
        "warm": "b. warm restart: kernel holds them all, nothing added",
        "lost": f"c. warm restart, {n // 100:,} lost from the kernel and re-added",
    }
    for k, m in med.items():
        each = ", ".join(f"{x['setup']:.2f}" for x in runs[k])
        print(
            f"{labels[k]}: setup {m['setup']:.2f} s ({each}; ruleset {m['ruleset']:.2f}, dumps {m['dumps']:.2f}, "
            f"commit {m['commit']:.2f} of {m['committed']:.0f} elements)"
        )
    print(
        f"release_allowlisted over {n:,} blocks: {r['release'] * 1000:.0f} ms with this host's {len(own)} addresses "
        f"in the policy (as the daemon's), {r['release_none'] * 1000:.0f} ms with none"
    )
    print(
        f"ruleset with the block sets full: 'add element ... ports {{ ... }}' alone {r['ports_add']:.3f} s; the same "
        f"ports declared as 'add set ... {{ elements = {{ ... }} }}' {r['ports_decl']:.4f} s"
    )

    for side, starts in daemons.items():
        logged = "; ".join(said for _, said in starts if said) or "nothing (this tree logs no timings)"
        took = spread([t for t, _ in starts])
        print(f"govern run, {side} tree, start to first answer (the kernel holding the blocks): {took}")
        print(f"  it logged: {logged}")
    if "base" in daemons:
        ratio = statistics.median(t for t, _ in daemons["this"]) / statistics.median(t for t, _ in daemons["base"])
        print(f"govern run, start to first answer, this tree / base: {ratio:.2f}")

    print(f"\n| start-up with {n:,} blocks | Store.load | setup (reconcile) | of which ruleset / dumps / commit | "
          f"release_allowlisted | load + setup + release | target <= {TARGET_S:.0f} s |")  # fmt: skip
    print("|---|---:|---:|---|---:|---:|---|")

    def verdict(seconds: float) -> str:
        return "met" if seconds <= TARGET_S else f"missed by {seconds - TARGET_S:.2f} s"

    for k, m in med.items():
        total = r["load"] + m["setup"] + r["release"]
        print(
            f"| {labels[k]} | {r['load']:.2f} s | {m['setup']:.2f} s | {m['ruleset']:.2f} / {m['dumps']:.2f} / "
            f"{m['commit']:.2f} s | {r['release']:.2f} s | {total:.2f} s | {verdict(total)} |"
        )


if __name__ == "__main__":
    main()
