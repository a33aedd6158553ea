"""libbpf (Debian's libbpf1) through ctypes: the library, loaded once with the signatures of the calls govern makes
(the XDP loader's and the socket iterator's), and its errors (negative errno) turned into KernelError."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

from govern.errors import KernelError

_lib: ctypes.CDLL | None = None
_vp, _cp, _int, _u32 = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint32


def lib() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        try:
            b = ctypes.CDLL(ctypes.util.find_library("bpf") or "libbpf.so.1", use_errno=True)
        except OSError as exc:
            raise KernelError(f"libbpf is not installed ({exc}); install Debian's libbpf1") from None
        sigs: dict[str, tuple[list[object], object]] = {
            "bpf_object__open_file": ([_cp, _vp], _vp),
            "bpf_object__load": ([_vp], _int),
            "bpf_object__close": ([_vp], None),
            "bpf_object__find_program_by_name": ([_vp, _cp], _vp),
            "bpf_object__find_map_by_name": ([_vp, _cp], _vp),
            "bpf_program__fd": ([_vp], _int),
            "bpf_map__fd": ([_vp], _int),
            "bpf_map__pin": ([_vp, _cp], _int),
            "bpf_map__set_pin_path": ([_vp, _cp], _int),
            "bpf_xdp_attach": ([_int, _int, _u32, _vp], _int),
            "bpf_xdp_detach": ([_int, _u32, _vp], _int),
            "bpf_obj_get": ([_cp], _int),
            "bpf_map_update_elem": ([_int, _vp, _vp, ctypes.c_uint64], _int),
            "bpf_map_delete_elem": ([_int, _vp], _int),
            "bpf_map_lookup_elem": ([_int, _vp, _vp], _int),
            "bpf_map_get_next_key": ([_int, _vp, _vp], _int),
            "bpf_map_lookup_batch": ([_int, _vp, _vp, _vp, _vp, _vp, _vp], _int),
            "libbpf_num_possible_cpus": ([], _int),
            "bpf_xdp_query_id": ([_int, _int, _vp], _int),
            "bpf_program__attach_iter": ([_vp, _vp], _vp),
            "bpf_link__fd": ([_vp], _int),
            "bpf_link__destroy": ([_vp], _int),
            "bpf_iter_create": ([_int], _int),
            "libbpf_get_error": ([_vp], ctypes.c_long),
        }
        for name, (args, res) in sigs.items():
            fn = getattr(b, name)
            fn.argtypes, fn.restype = args, res
        _lib = b
    return _lib


def check(rc: int, what: str) -> int:
    if rc < 0:
        raise KernelError(f"{what}: {os.strerror(-rc)}", -rc)
    return rc
