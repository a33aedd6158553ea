"""`govern export`: one rendering of the current set, or the ExaBGP follower. Both ask the daemon for its view."""

from __future__ import annotations

import os
import tempfile

from govern import protocol
from govern.config import Config
from govern.control import call
from govern.errors import DaemonUnavailable, UsageError
from govern.export import follow as follower
from govern.export import view
from govern.export.formats import FORMATS, exabgp_routes, render


def fetch(config: Config) -> view.View:
    reply = call(config["daemon"]["socket"], protocol.to_wire(protocol.Export()), timeout=10.0)
    if not reply.get("ok"):
        raise DaemonUnavailable(f"the daemon refused the export: {reply.get('error', 'no reason given')}")
    return view.parse(reply)


def once(config: Config, fmt: str, *, rtbh: bool = False) -> str:
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r} (known: {', '.join(FORMATS)})")
    v = fetch(config)
    return render(fmt, view.choose(v, config), view.target(v, config, rtbh=rtbh), v.now)


def write(path: str, text: str) -> None:
    """Replace `path` whole (temp file and rename), so a feed reader never sees half a list."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".govern-export-")
    except OSError as exc:
        raise UsageError(f"cannot write to {directory}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        os.unlink(tmp)
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None


def follow(config: Config, *, rtbh: bool = False) -> int:
    def routes() -> list[str]:
        v = fetch(config)
        return exabgp_routes(view.choose(v, config).entries, view.target(v, config, rtbh=rtbh))

    return follower.run(routes, config["export"]["poll"])
