"""libnftables through ctypes: for the ruleset (table, sets, chain), which changes rarely and reads best as text.

Element updates do not go through here: on interval sets libnftables re-reads the whole set before each command
(measured: 0.5-1.3 s to add one address beside 100k others), so they go through govern.nft.netlink instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import threading
from typing import Any

from govern.errors import KernelError

_lib: ctypes.CDLL | None = None
_lock = threading.Lock()


def _load() -> ctypes.CDLL:
    global _lib
    with _lock:
        if _lib is None:
            name = ctypes.util.find_library("nftables") or "libnftables.so.1"
            try:
                lib = ctypes.CDLL(name)
            except OSError as exc:
                raise KernelError(f"libnftables is not installed ({exc}); install Debian's libnftables1") from None
            lib.nft_ctx_new.restype = ctypes.c_void_p
            lib.nft_ctx_new.argtypes = [ctypes.c_uint]
            lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
            lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
            lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
            lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
            lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
            _lib = lib
        return _lib


NFT_CTX_OUTPUT_JSON = 1 << 4
NFT_CTX_OUTPUT_TERSE = 1 << 11  # sets without their elements


class Nft:
    """One libnftables context. Each `run` is one transaction: the buffer applies whole or not at all."""

    def __init__(self) -> None:
        self._lib = _load()
        self._ctx = self._lib.nft_ctx_new(0)
        self._lib.nft_ctx_buffer_output(self._ctx)
        self._lib.nft_ctx_buffer_error(self._ctx)

    def run(self, commands: str) -> str:
        rc = self._lib.nft_run_cmd_from_buffer(self._ctx, commands.encode())
        out = (self._lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode()
        err = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode().strip()
        if rc != 0:
            first = commands.strip().splitlines()[0] if commands.strip() else ""
            raise KernelError(f"nftables refused '{first[:80]}': {err or 'no reason given'}")
        return out

    def json(self, command: str, *, terse: bool = False) -> dict[str, Any]:
        self._lib.nft_ctx_output_set_flags(self._ctx, NFT_CTX_OUTPUT_JSON | (NFT_CTX_OUTPUT_TERSE if terse else 0))
        try:
            out = self.run(command)
        finally:
            self._lib.nft_ctx_output_set_flags(self._ctx, 0)
        data: dict[str, Any] = json.loads(out) if out.strip() else {}
        return data

    def tables(self) -> set[tuple[str, str]]:
        """(family, name) of every table in this network namespace."""
        items = self.json("list tables").get("nftables", [])
        return {(i["table"]["family"], i["table"]["name"]) for i in items if "table" in i}

    def close(self) -> None:
        if self._ctx:
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = None
