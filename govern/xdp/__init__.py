"""The XDP fast path (bpf/govern_xdp.c): its map layouts in ctypes (maps), and the libbpf loader (loader)."""
