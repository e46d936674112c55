"""Run untrusted generated code in a subprocess with time, memory, file-size and process limits.

The child runs ``python -I`` (isolated: no site-packages of the user, no env vars) in an empty temp
directory with a scrubbed environment, in its own session so a timeout kills the whole group. This is
a guard against accidents (infinite loops, memory bombs, stray files), not a security boundary against
a determined attacker; run evaluations of untrusted models in a container.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 10.0  # wall clock per program (HumanEval's harness uses 3 s per problem)
    memory_bytes: int = 1 << 30  # address space cap
    file_bytes: int = 16 << 20  # largest file the program may write
    processes: int = 64  # RLIMIT_NPROC: stops fork bombs


@dataclass(frozen=True)
class SandboxResult:
    status: str  # "passed" | "failed" | "timeout"
    returncode: int | None
    output: str  # tail of stdout + stderr

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _limit(limits: SandboxLimits):
    def apply() -> None:
        cpu = int(limits.timeout_s) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def run_python(program: str, limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Run ``program``; passed = exit status 0 within the limits."""
    with tempfile.TemporaryDirectory(prefix="neo-sandbox-") as tmp:
        script = Path(tmp) / "program.py"
        script.write_text(program, encoding="utf-8")
        proc = subprocess.Popen(
            [sys.executable, "-I", str(script)], cwd=tmp, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={"PATH": "/usr/bin:/bin", "HOME": tmp},
            preexec_fn=_limit(limits), start_new_session=True,
        )
        try:
            out, _ = proc.communicate(timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            return SandboxResult("timeout", None, out.decode(errors="replace")[-2000:])
        status = "passed" if proc.returncode == 0 else "failed"
        return SandboxResult(status, proc.returncode, out.decode(errors="replace")[-2000:])
