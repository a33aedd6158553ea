"""A fleet of MX hosts that defends as one (docs/fleet.md): the signed decision codec (codec), the shared key
(key), the Redis link that runs beside the tick (link)."""
