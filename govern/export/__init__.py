"""Handing the blocklist to the upstream ISP (docs/export.md): the guardrails that choose what may leave the host
(select), the formats (formats), the daemon's view of its blocks (view), the ExaBGP process that follows the
blocks (follow) and the pull feed the daemon serves over HTTP (feed)."""
