"""The adversary matrix in CI: the `mixed` flood (silent, dripping, babbling, slow-talking, pre-banner and reconnecting
bots, an IPv6 swarm over many /64s, and spoofed SYNs whose SYN-ACKs go unanswered) against the real lab Postfix, short,
with govern on its defaults plus the lab's allowlist. The legitimate traffic is the matrix's: the busy known relays,
the trusted relay, never-seen strangers and a slow, patient MTA.

What this test holds govern to, on every run, are issue 11's targets for this flood: delivery for the known relays
and for the never-seen strangers at 98% or better (absolute: stricter than the same share of a baseline, which
delivers at most everything, so CI spares the baseline's minute; the matrix runs of docs/lab.md keep theirs), the
trusted relay at 100% and never in a punitive set (blocks, throttles, tight throttles, tarpits), no legitimate sender
in one, the slow MTA's every message delivered, the rolling 5 s success of known relays and strangers back at 90% or
more within 3 s of the flood's start and staying there, the known relays' latency p95 at 2 s or less, and the
sessions bot-range sources keep on port 25 within the slot budget govern reports from the flood's 3rd second on.

Until 2026-12-07 it held floors under them (95% for strangers and the trusted relay, the budget over the flood's last
five seconds only), when bot-range sessions had stayed a few over the budget for seconds in the middle of this flood
(31-34 of 30 for 8 s in a CI run). Seven runs of this cell at f6ea584 on the AMD EPYC VM (`/tmp/r-ci`, `/tmp/r-ci2`)
met every target: strangers 99.2-100% (one sender of two messages a second apart, the second making its /64 a crowd
in the flood's third second, timed out at connect in six runs of seven; since 0af2863 only connections at once make a
crowd, and five runs had every stranger delivered), trusted relay 100%, rolling success never under 90%, known p95
0.01-0.40 s, within the budget after 0.0-1.9 s (1.8-3.0 s in the five runs on another VM of the type, and 3.58 s in
one run of the code before 0af2863 there: this target is the one this cell meets with the least to spare; docs/lab.md).
Not held here: the strangers' latency p95 (1.0-2.1 s in those runs; a first contact's first SYN is dropped in a wave by
design, docs/wave.md).
"""

from __future__ import annotations

from pathlib import Path

from govern_lab import matrix


def test_mixed_flood_short_govern_meets_the_targets(tmp_path: Path) -> None:
    plan = matrix.MatrixPlan.ci()
    cell = matrix.run_cell(matrix.SCENARIOS["mixed"], "govern", tmp_path / "mixed-govern", plan)
    (tmp_path / "mixed-govern" / "result.json").write_text(cell.to_json())
    print(matrix.table([cell], None))
    # The slot budget govern reports (`govern status --json`: budget.slots), sized from the lab Postfix's 50 slots.
    budget = cell.budget_slots
    assert budget is not None and 0 < budget <= 50, budget
    print(f"slot budget: {budget}")

    # Every kind of legitimate sender was at work during the flood.
    assert cell.known["attempted"] >= 80 and cell.strangers["attempted"] >= 40 and cell.trusted["attempted"] >= 30
    # The flood was real: bot-range sources got sessions on port 25.
    assert cell.bot_sessions_peak > 0

    # Legitimate mail keeps flowing, from known relays and from senders never seen before.
    assert cell.known["success"] is not None and cell.known["success"] >= 0.98, cell.known
    assert cell.strangers["success"] is not None and cell.strangers["success"] >= 0.98, cell.strangers
    # The slow, patient MTA delivers everything it tried (the seed's collateral damage is a support call).
    assert cell.slowlegit["attempted"] >= 1 and cell.slowlegit["delivered"] == cell.slowlegit["attempted"], (
        cell.slowlegit
    )
    # The trusted relay: all of it delivered, never punished; no legitimate sender in any punitive set.
    assert cell.trusted["success"] == 1.0, cell.trusted
    assert cell.in_punitive_sets == {"trusted": [], "known": [], "strangers": [], "slowlegit": []}
    # Mitigated at once: rolling success back at 90% within 3 s of the flood's start, and the known relays quick.
    assert cell.stays_ok_after is not None and cell.stays_ok_after <= 3.0, cell.stays_ok_after
    assert cell.known["latency_p95"] is not None and cell.known["latency_p95"] <= 2.0, cell.known
    # Bot-held sessions within the budget from the flood's 3rd second on.
    assert cell.bots_in_budget_after is not None and cell.bots_in_budget_after <= 3.0, (
        cell.bots_in_budget_after,
        budget,
        cell.bot_sessions_peak,
        cell.bot_sessions_median,
    )
