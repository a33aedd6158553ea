"""Syntax checks for the hostnames and SPF domains named in `[allow]`: a bad item is caught at load, with its index,
instead of failing quietly at the first DNS query."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any

from govern.checks import items, typename
from govern.errors import shown

# Underscores are legal in DNS names and common in SPF (`_spf.example.com`); hostnames are held to the same rule so
# that one check serves both.
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")


def domain(text: str) -> str:
    """The name in canonical form (lower case, no trailing dot), or ValueError saying what is wrong with it."""
    if len(text) > 254:  # before anything else reads it: a name is never this long
        raise ValueError(f"{shown(text)} is longer than 253 characters")
    name = text.strip().lower()
    name = name.removesuffix(".")
    if not name:
        raise ValueError("empty name")
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        raise ValueError(f"{text!r} is an address, not a name (put addresses in allow.cidrs)")
    if len(name) > 253:
        raise ValueError(f"{shown(text)} is longer than 253 characters")
    labels = name.split(".")
    if len(labels) < 2:
        raise ValueError(f"{text!r} is not a fully qualified name (expected e.g. mx.example.com)")
    for label in labels:
        if not _LABEL.match(label):
            raise ValueError(f"{text!r} is not a valid DNS name (bad label {label!r})")
    if labels[-1].isdigit():
        raise ValueError(f"{text!r} is not a valid DNS name (numeric top-level label)")
    return name


def domains(what: str) -> Callable[[Any], tuple[str, ...]]:
    """A config check for a list of names: each valid and listed once."""

    def check(v: Any) -> tuple[str, ...]:
        return items(v, what, one, twice=lambda item: f"{shown(item)} is listed twice")

    def one(item: Any) -> str:
        if not isinstance(item, str):
            raise ValueError(f"expected a {what[:-1]} string, got {typename(item)}")
        return domain(item)

    return check
