"""A benchmark's worker process, driven line by line: the A/B benches run one per tree (old and new), each in a
network namespace, and send it commands on stdin; each answer is one line on stdout (a time in ms, or a greeting)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence


class Worker:
    """`argv` run inside namespace `ns`; its first line (the greeting) is printed under `name`."""

    def __init__(self, name: str, ns: str, argv: Sequence[str], wait: float = 60) -> None:
        self.name = name
        self.wait = wait
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        print(f"{name}: {self.ask_line('')}", flush=True)

    def ask_line(self, cmd: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if cmd:
            self.proc.stdin.write(cmd + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.name} worker failed")
        return line.strip()

    def ask(self, cmd: str) -> float:
        return float(self.ask_line(cmd))

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=self.wait)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
