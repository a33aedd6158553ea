"""The shapes config values are checked against, shared by govern.config and the checks it imports
(govern.allow.names): a list whose items each pass a check of their own. A leaf module: it imports nothing of govern's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def typename(v: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "a table"}
    return names.get(type(v), type(v).__name__)


def items(v: Any, what: str, check: Callable[[Any], T], *, twice: Callable[[Any], str] | None = None) -> tuple[T, ...]:
    """`v` as a list of `what`, each item through `check` (its ValueError gains "item N: "). With `twice`, an item
    whose checked value is already in the list is refused with the sentence `twice(item)`."""
    if not isinstance(v, list):
        raise ValueError(f"expected a list of {what}, got {typename(v)}")
    out: list[T] = []
    seen: set[T] = set()  # a list's `in` would make a long list quadratic: 65,535 ports took seconds
    for i, item in enumerate(v):
        try:
            value = check(item)
        except ValueError as exc:
            raise ValueError(f"item {i}: {exc}") from None
        if twice is not None:
            if value in seen:
                raise ValueError(f"item {i}: {twice(item)}")
            seen.add(value)
        out.append(value)
    return tuple(out)
