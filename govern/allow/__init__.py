"""Where the allowlist and learned trust come from, beyond the config's inline prefixes.

- names: syntax checks for the hostnames and domains the config names (a leaf: govern.config imports it)
- dns: the DNS edge (a Protocol, answers with TTLs) and its dnspython implementation
- spf: pure expansion of a domain's SPF record into the prefixes it authorises
- files: allowlist files re-read when they change, keeping the last good content
- sources: the allowlist edge the daemon refreshes between ticks (inline, files, hostnames, SPF)
- trust: the pure record of sources that completed deliveries recently
- postfix: reading completed deliveries' client addresses from the Postfix log
- learning: the learned-trust edge the daemon refreshes (Trust fed from the Postfix log)

This module imports nothing so that govern.config can import govern.allow.names without a cycle.
"""
