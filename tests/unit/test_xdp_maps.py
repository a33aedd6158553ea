"""bpf/govern_maps.h is the single source of the XDP maps' names and layouts: the Python side must match it."""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

from govern.xdp import maps

HEADER = (Path(__file__).parents[2] / "bpf" / "govern_maps.h").read_text()
CTYPES = {"__u8": ctypes.c_uint8, "__u16": ctypes.c_uint16, "__u32": ctypes.c_uint32, "__u64": ctypes.c_uint64}


def defines() -> dict[str, str]:
    return dict(re.findall(r"^#define GOVERN_(\w+) (\S+)$", HEADER, re.M))


def structs() -> dict[str, list[tuple[str, str, int]]]:
    """struct name -> [(field, C type, array length or 0)] in order."""
    out: dict[str, list[tuple[str, str, int]]] = {}
    for name, body in re.findall(r"^struct (\w+) \{\n(.*?)\n\};", HEADER, re.M | re.S):
        fields = re.findall(r"^\s*(__u\d+) (\w+)(?:\[(\d+)\])?;", body, re.M)
        out[name] = [(f, t, int(n or 0)) for t, f, n in fields]
    return out


def test_map_names_and_constants_match() -> None:
    d = defines()
    for name in ("ALLOW4", "ALLOW6", "BLOCK4", "BLOCK6", "HOST4", "HOST6", "NET6", "SYNS", "STATS", "PORTS"):
        assert d[f"MAP_{name}"] == f'"{getattr(maps, f"MAP_{name}")}"', name
    assert d["PROG"] == f'"{maps.PROG}"'
    limits = ("PREFIXES_MAX", "HOSTS_MAX", "SOURCES_MAX", "PORTS_MAX")
    for name in (*limits, "PASS_ALLOW", "DROP_BLOCK", "PASS_OTHER", "REASONS"):
        assert int(d[name]) == getattr(maps, name), name


def test_structs_match_field_for_field() -> None:
    found = structs()
    assert set(found) == set(maps.STRUCTS)
    for name, fields in found.items():
        py = maps.STRUCTS[name]
        assert [f[0] for f in py._fields_] == [f for f, _, _ in fields], name
        for (fname, ctype, n), pyfield in zip(fields, py._fields_, strict=True):
            want = CTYPES[ctype] * n if n else CTYPES[ctype]
            got = pyfield[1]
            assert ctypes.sizeof(got) == ctypes.sizeof(want), f"{name}.{fname}"
            assert getattr(got, "_type_", got) == getattr(want, "_type_", want), f"{name}.{fname}"


def test_the_parser_sees_every_struct() -> None:
    # A header edit the regular expressions no longer read must fail here rather than pass vacuously.
    assert HEADER.count("struct govern_") == len(structs()) == 8
    assert all(structs().values())
