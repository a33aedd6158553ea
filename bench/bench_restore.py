"""Benchmark: bringing 100k blocks back after a restart -- the store's load and the nftables backend's setup.

    .venv/bin/python bench/bench_restore.py [--blocks 100000] [--reps 5]

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
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import machine  # noqa: E402
from govern import config as govern_config  # noqa: E402
from govern.addr import Prefix  # noqa: E402
from govern.config import Config  # noqa: E402
from govern.core.decide import release_allowlisted  # noqa: E402
from govern.model import Action, ActionKind, Plan, State  # noqa: E402
from govern.nft.backend import NftBackend  # noqa: E402
from govern.nft.libnft import Nft  # noqa: E402
from govern.nft.netlink import ElemOp  # noqa: E402
from govern.nft.ruleset import INTERVAL_SETS, part, parts  # noqa: E402
from govern.store import Store  # noqa: E402
from tests.netns import Netns, new_name, sh  # noqa: E402

TARGET_S = 2.0
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
    # Block and throttle elements only: set_allow commits the allowlist through the same socket, and the wave's gate
    # (opened: two deletes) rides in the restore's transaction.
    elems = sum(1 for ops, *_ in commit.calls for op in ops if not op.set.startswith(("allow", "gate")))
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=5)
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
                loads, loads_nogc = [], []
                for _ in range(args.reps):
                    t0 = time.perf_counter()
                    state = store.load()
                    loads.append(time.perf_counter() - t0)
                    # The same with the cyclic GC held off: how much of it is collections of the new objects.
                    gc.disable()
                    try:
                        t0 = time.perf_counter()
                        store.load()
                        loads_nogc.append(time.perf_counter() - t0)
                    finally:
                        gc.enable()
                t0 = time.perf_counter()
                rows = (
                    store.db.execute("SELECT * FROM blocks").fetchall()
                    + store.db.execute("SELECT * FROM offenders").fetchall()
                )
                r["fetch"] = time.perf_counter() - t0
                del rows
            finally:
                store.close()
            r["load"] = statistics.median(loads)
            r["load_nogc"] = statistics.median(loads_nogc)
            if len(state.blocks) != n:
                raise RuntimeError(f"the store gave back {len(state.blocks)} blocks of {n}")
            print(
                f"Store.save of {n:,} BLOCK actions: {r['save']:.2f} s; Store.load: {r['load']:.2f} s (median; "
                f"{r['load_nogc']:.2f} s with the cyclic GC off; SQLite's rows alone, blocks and offenders: "
                f"{r['fetch']:.2f} s)"
            )
            del plan

            policy = cfg.policy()
            t0 = time.perf_counter()
            released = release_allowlisted(state, policy)
            r["release"] = time.perf_counter() - t0
            assert not released

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
    print(f"release_allowlisted over {n:,} blocks: {r['release'] * 1000:.0f} ms")
    print(
        f"ruleset with the block sets full: 'add element ... ports {{ ... }}' alone {r['ports_add']:.3f} s; the same "
        f"ports declared as 'add set ... {{ elements = {{ ... }} }}' {r['ports_decl']:.4f} s"
    )

    print(f"\n| start-up with {n:,} blocks | Store.load | setup (reconcile) | of which ruleset / dumps / commit | "
          f"load + setup + release_allowlisted | target <= {TARGET_S:.0f} s: reconcile; whole start-up |")  # fmt: skip
    print("|---|---:|---:|---|---:|---|")

    def verdict(seconds: float) -> str:
        return "met" if seconds <= TARGET_S else f"missed by {seconds - TARGET_S:.2f} s"

    for k, m in med.items():
        total = r["load"] + m["setup"] + r["release"]
        print(
            f"| {labels[k]} | {r['load']:.2f} s | {m['setup']:.2f} s | {m['ruleset']:.2f} / {m['dumps']:.2f} / "
            f"{m['commit']:.2f} s | {total:.2f} s | {verdict(m['setup'])}; {verdict(total)} |"
        )


if __name__ == "__main__":
    main()
