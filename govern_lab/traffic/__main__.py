"""`python -m govern_lab.traffic ROLE ...`: what the lab runs inside a client namespace, one process per role."""

from govern_lab.traffic.command import main

raise SystemExit(main())
