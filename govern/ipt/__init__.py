"""The iptables+ipset backend (docs/iptables.md): legacy xtables rules through python-iptables, sets through
`ipset restore`."""
