"""The observe layer: reads the kernel and builds one immutable Snapshot per tick."""
