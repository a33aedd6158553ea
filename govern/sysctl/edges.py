"""The sysctl edges' Protocols, beside the values they carry (govern.sysctl.planner): the namespace's sysctls as
the kernel shows them (govern.sysctl.procsys.ProcSys), and the profiles the daemon applies and restores
(govern.sysctl.manager.SysctlManager). Fakes: govern.fakes.FakeSysctls; dry run: govern.dryrun.DryRunSysctls."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from govern.sysctl.planner import Item, Reading

if TYPE_CHECKING:
    from govern.sysctl.manager import Drift, Report


class Sysctls(Protocol):
    """The sysctls of the network namespace govern runs in (govern.sysctl.procsys.ProcSys)."""

    def read(self, key: str) -> Reading: ...

    def write(self, key: str, value: str) -> None:
        """Set a key or raise KernelError, changing nothing."""
        ...

    def in_initial_namespace(self) -> bool: ...

    def where(self) -> tuple[str, str]:
        """(boot id, network namespace): the place a journal of original values is valid."""
        ...


class SysctlProfiles(Protocol):
    """The sysctl profiles the daemon applies and restores (govern.sysctl.manager.SysctlManager)."""

    def plan(self, *, wave: bool = False) -> tuple[Item, ...]: ...

    def profiles(self) -> list[str]: ...

    def recover(self) -> Report: ...

    def apply(self) -> Report: ...

    def enter_wave(self) -> Report: ...

    def leave_wave(self) -> Report: ...

    def restore(self, what: str = "restore") -> Report: ...

    def verify(self) -> tuple[Drift, ...]: ...
