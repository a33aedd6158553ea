"""Sizing the TCP stack for the sessions an MX must carry: the pure planner (planner), the /proc/sys reader and
writer (procsys), the crash-safe journal of original values (journal), the manager that ties them together
(manager), and the check of each listener's own accept backlog (backlog). docs/sysctl.md explains every key."""
