"""The adversary matrix in CI: the `mixed` flood (silent, dripping, babbling, slow-talking, pre-banner and reconnecting
bots, an IPv6 swarm over many /64s, and spoofed SYNs whose SYN-ACKs go unanswered) against the real lab Postfix, short,
with govern on its defaults plus the lab's allowlist. The legitimate traffic is the matrix's: the busy known relays,
the trusted relay, never-seen strangers and a slow, patient MTA.

What this test holds govern to, on every run: delivery for the known relays at 98% or better and for the never-seen
strangers at 95% or better (absolute: stricter than the same share of a baseline, which delivers at most everything,
so CI spares the baseline's minute; the matrix runs of docs/lab.md keep theirs), the trusted relay at 95% or better,
never the trusted relay or any legitimate sender in a punitive set (blocks, throttles, tight throttles, tarpits), and
the sessions bot-range sources keep on port 25 within the slot budget govern reports over the flood's last five
seconds.

Issue 11's targets are stricter: 98% for strangers, 100% for the trusted relay and the budget from the flood's 3rd
second on. The matrix runs meet the first two in this scenario, but bot-range sessions can stay a few over the budget
for seconds in the middle of this flood (31-34 of 30 for 8 s in a CI run; docs/lab.md, "Adversary matrix results",
says what is known of it), so the floors here are what every run meets, and the targets stay in the table until they
are met.
"""

from __future__ import annotations

from pathlib import Path

from govern_lab import matrix


def test_mixed_flood_short_govern_keeps_legit_and_holds_bots_to_the_budget(tmp_path: Path) -> None:
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
    assert cell.strangers["success"] is not None and cell.strangers["success"] >= 0.95, cell.strangers
    # The trusted relay: delivered (a few transactions of the flood's first seconds may time out), never punished.
    assert cell.trusted["success"] >= 0.95, cell.trusted
    assert cell.in_punitive_sets["trusted"] == []
    # No legitimate sender in any punitive set.
    assert cell.in_punitive_sets == {"trusted": [], "known": [], "strangers": [], "slowlegit": []}
    # Bot-held sessions over the flood's last five seconds: within the budget.
    res = cell.result
    assert res.flood_start is not None and res.flood_end is not None
    tail = [x.bot_sessions for x in res.samples if res.flood_end - 5 <= x.t < res.flood_end]
    assert tail and max(tail) <= budget, (tail, budget, cell.bot_sessions_peak, cell.bot_sessions_median)
