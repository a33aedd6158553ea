"""nftables adapters: govern's own raw-netlink fast path for set elements, and what builds on it."""
