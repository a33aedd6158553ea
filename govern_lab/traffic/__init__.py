"""The flood lab's traffic: legitimate senders, a trusted relay and the bots, one asyncio process per role.

The package holds the generators, one module a job: `options` (what each role takes), `sources` (the addresses a role
may aim at and send from), `host` (the namespace check, limits and sockets), `counters` (per-second counts),
`smtp` (the SMTP client), `analysis` (the pure helpers the scenario runner reads transactions with: `summarise`,
`rolling_success`), `driver` (running a role to its end, the JSON report), the roles in `senders` (`legit`,
`trusted`), `bots` (`hogs`, `pretalk`, `swarm`, `reconnect`), `syn` (`synflood` and its SYN builder) and
`adversaries` (the adversary matrix's `drip`, `babble`, `slowtalk`, `strangers`, `slowlegit`), and `command`, the
command line. The runner starts one process per role inside a client namespace:

    ip netns exec NS python -m govern_lab.traffic ROLE --dst 203.0.113.25 [--dst 2001:db8:25::25] \\
        --duration SECONDS [--sources CIDR ...] [--count N] [--seed N] [--json-out PATH] [role options]

Safety (docs/testing.md): a generator refuses to run outside a namespace made with `ip netns add`, aims only at the
lab's MX range (203.0.113.0/24, 2001:db8:25::/48), sends only from the lab's client ranges (bots, spoofed SYNs
included, only from the bot range), and always stops by itself: `--duration` is capped, enforced by the event
loop, and backed by SIGALRM in case the loop itself is stuck.

The report (JSON, one line): {"role", "args", "started" (wall clock), "duration" (seconds run), "stopped_by"
("duration", "finished", "SIGTERM", "SIGINT", "stopped"), "events", "totals"}.
- legit, trusted: one event per SMTP transaction: "n", "t_start" and "t_end" (seconds since the generator started),
  "wall" (wall clock at its start), "src", "dst", "ok" (250 after the message and 221 after QUIT), "stage" where it
  failed (connect, banner, ehlo, mail, rcpt, data, message, quit), "reason" (timeout, transaction timeout, refused,
  reset, closed, reply NNN, protocol, an errno name, cut), "detail" (the server's reply), "latency", "cut" (still
  running when the run ended: outcome unknown). "totals" is `summarise(events)`.
- bot roles: one event per second, {"t": second, *BOT_FIELDS (or FLOOD_FIELDS), "held"}; "totals" sums them and adds
  "held_at_end", "max_held", "error_kinds", "sources" (synflood: "pps_wanted", "pps_sent", "packet_limit").
"""
