"""Run untrusted generated code (HumanEval completions) in a bubblewrap sandbox.

Each program runs in a fresh ``bwrap`` sandbox with its own network, PID, IPC, UTS and mount
namespaces, as the unprivileged uid/gid 65534 (nobody), with a scrubbed environment and ``python -I``:

- Network: a new network namespace whose only interface is a loopback that is down; nothing on the
  host (Redis on 127.0.0.1, the serving API, the internet) can be reached.
- Processes: its own PID namespace, so it sees no process of the host (no ``/proc/<ppid>/environ``);
  when the program ends or times out, the namespace's init is killed and the kernel kills every
  process it started (a ``setsid`` grandchild included). Output is read against a wall-clock deadline
  and capped (``SandboxLimits.output_bytes``).
- Files: the host's ``/`` is mounted read-only and ``/tmp``, ``/home``, ``/root`` and ``/run`` are
  replaced by empty tmpfs (the interpreter's own directory is mounted back read-only where it lies
  under one of them). The only writable place is the private ``/tmp``, a size-capped tmpfs that
  holds the working directory ``/tmp/work`` with ``program.py``; it vanishes with the sandbox.
- Limits (set after the switch to the unprivileged uid, so they hold): CPU seconds, address space,
  file size, number of processes (RLIMIT_NPROC, which the kernel does not enforce for root) and no
  core files.
- Completion: a program passes only if it runs to its end: a wrapper executes it and then writes a
  random per-run token; an early ``os._exit(0)`` or ``sys.exit(0)`` exits with status 0 but without
  the token, and is scored "failed".

Run as root, ``bwrap`` sets the sandbox up with its privileges and a small launcher drops to the real
uid/gid 65534 (no supplementary groups, no capabilities, ``no_new_privs``) before the program runs.
Run as another user, ``bwrap`` creates a user namespace that maps uid 65534 to that user (user
namespaces must be allowed; nested ones are disabled) and RLIMIT_NPROC counts the sandbox's
processes only.

Not guaranteed: this is a namespace sandbox, not a VM. Host files outside the hidden directories
that are world-readable (or, run by a non-root user, readable by that user and its groups) can be
read, and printed into the report. The kernel is shared (no seccomp filter; run as root, the program
may still create user namespaces). Run as root, the process limit of uid 65534 is shared by the
sandboxes that run at the same time. The completion token is in the wrapper's memory, so a program
written to fool the harness (rather than one that merely exits early) can still forge a pass.
Memory is capped per process (RLIMIT_AS), not per sandbox.

bubblewrap >= 0.8 is required (Debian/Ubuntu: ``apt-get install bubblewrap``); without it
:func:`run_python` raises :class:`SandboxUnavailable` instead of running code unconfined.
"""

from __future__ import annotations

import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

#: The unprivileged uid/gid programs run as (``nobody``/``nogroup`` on Debian).
NOBODY = 65534
WORK_DIR = "/tmp/work"
#: Replaced by empty tmpfs in the sandbox: where secrets (homes, sockets, temp files) usually live.
HIDDEN_DIRS = ("/tmp", "/home", "/root", "/run")
INSTALL_HINT = ("install bubblewrap >= 0.8 (Debian/Ubuntu: `apt-get install bubblewrap`, Fedora: "
                "`dnf install bubblewrap`)")


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot run on this machine (bwrap missing, too old, or namespaces not permitted)."""


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 10.0  # wall clock per program (HumanEval's harness uses 3 s per problem)
    memory_bytes: int = 1 << 30  # address space cap
    file_bytes: int = 16 << 20  # largest file the program may write
    processes: int = 64  # RLIMIT_NPROC of uid 65534: stops fork bombs
    disk_bytes: int = 64 << 20  # size of the private /tmp (the working directory included)
    output_bytes: int = 1 << 20  # stdout + stderr beyond this: the program is killed and fails


@dataclass(frozen=True)
class SandboxResult:
    status: str  # "passed" | "failed" | "timeout"
    returncode: int | None
    output: str  # tail of stdout + stderr

    @property
    def passed(self) -> bool:
        return self.status == "passed"


# Runs in the sandbox as `python -I -c LAUNCHER`: read the token from stdin, drop root, set the limits,
# run program.py as __main__, and write the token only when it ran to its end. No exception is caught:
# a failing program prints its traceback and exits 1.
LAUNCHER = """\
import os, resource, sys
token = sys.stdin.readline().strip()
null = os.open(os.devnull, os.O_RDONLY)
os.dup2(null, 0)
os.close(null)
nobody, limits = {nobody}, {limits!r}
if os.getuid() == 0:
    os.setgroups([])
    os.setresgid(nobody, nobody, nobody)
    os.setresuid(nobody, nobody, nobody)
if 0 in os.getresuid() or 0 in os.getresgid() or 0 in os.getgroups():
    sys.exit("sandbox: refusing to run the program with root credentials")
for name, value in limits.items():
    resource.setrlimit(getattr(resource, name), (value, value))
path = {work!r} + "/program.py"
sys.argv = [path]
with open(path, encoding="utf-8") as f:
    code = compile(f.read(), path, "exec")
del f
exec(code, {{"__name__": "__main__", "__file__": path, "__builtins__": __builtins__}})
sys.stdout.flush()
sys.stderr.flush()
os.write(1, ("\\n" + token + "\\n").encode())
os._exit(0)
"""


def _interpreter() -> tuple[str, str]:
    """The base interpreter (not a venv's wrapper: its site-packages are not needed) and its prefix."""
    exe = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    return exe, os.path.realpath(sys.base_prefix)


def _privileged() -> bool:
    """Root sets the sandbox up without a user namespace and drops to the real uid 65534 inside."""
    return os.geteuid() == 0


def _mkdirs(path: str) -> list[str]:
    """bwrap arguments that create ``path``'s missing parents as 0755 directories (bwrap makes 0700)."""
    args, parts = [], Path(path).parts
    for i in range(2, len(parts)):
        args += ["--perms", "0755", "--dir", str(Path(*parts[:i]))]
    return args


def _bwrap_command(bwrap: str, program_fd: int, limits: SandboxLimits, privileged: bool) -> list[str]:
    exe, prefix = _interpreter()
    cmd = [bwrap, "--die-with-parent", "--new-session", "--unshare-ipc", "--unshare-pid", "--unshare-net",
           "--unshare-uts", "--unshare-cgroup-try"]
    if privileged:  # no user namespace: the launcher switches to the real uid 65534 and needs these two
        cmd += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        cmd += ["--unshare-user", "--disable-userns", "--uid", str(NOBODY), "--gid", str(NOBODY)]
    cmd += ["--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev"]
    hidden = [d for d in HIDDEN_DIRS if os.path.isdir(d) and not os.path.islink(d)]
    for d in hidden:
        if d == "/tmp":
            cmd += ["--perms", "1777", "--size", str(limits.disk_bytes), "--tmpfs", d]
        else:
            cmd += ["--tmpfs", d]
    for keep in dict.fromkeys([prefix, os.path.dirname(exe)]):  # the interpreter, if it lies in a hidden dir
        if any(keep == d or keep.startswith(d + "/") for d in hidden) and keep not in hidden:
            cmd += [*_mkdirs(keep), "--ro-bind", keep, keep]
    cmd += ["--perms", "0777", "--dir", WORK_DIR, "--perms", "0644", "--file", str(program_fd),
            f"{WORK_DIR}/program.py", "--chdir", WORK_DIR, "--clearenv", "--setenv", "PATH", "/usr/bin:/bin",
            "--setenv", "HOME", WORK_DIR, "--setenv", "LANG", "C.UTF-8"]
    cpu = int(limits.timeout_s) + 1
    rlimits = {"RLIMIT_CPU": cpu, "RLIMIT_AS": limits.memory_bytes, "RLIMIT_FSIZE": limits.file_bytes,
               "RLIMIT_NPROC": limits.processes, "RLIMIT_CORE": 0}
    return cmd + ["--", exe, "-I", "-c", LAUNCHER.format(nobody=NOBODY, limits=rlimits, work=WORK_DIR)]


def _kill(proc: subprocess.Popen) -> None:
    """Kill bwrap and its process group: its init dies with it (--die-with-parent), and with the
    namespace's init the kernel kills every process left in the sandbox."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.kill()


def _run(program: str, limits: SandboxLimits, bwrap: str) -> SandboxResult:
    token = secrets.token_hex(16)
    program_fd = os.memfd_create("program.py", 0)
    try:
        os.write(program_fd, program.encode("utf-8"))
        os.lseek(program_fd, 0, os.SEEK_SET)
        proc = subprocess.Popen(
            _bwrap_command(bwrap, program_fd, limits, _privileged()), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={"PATH": "/usr/bin:/bin"},
            pass_fds=(program_fd,), start_new_session=True,
        )
    finally:
        os.close(program_fd)
    deadline = time.monotonic() + limits.timeout_s
    try:
        proc.stdin.write(f"{token}\n".encode())
        proc.stdin.close()
    except BrokenPipeError:  # bwrap failed before reading it: its error is on stdout
        pass
    out, total, status = bytearray(), 0, None  # out: the last 8 KiB (the token is written last)
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                status = "timeout"
                break
            if not sel.select(left):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            total += len(chunk)
            out += chunk
            del out[:-8192]
            if total > limits.output_bytes:
                status = "failed"
                out += f"\n[sandbox: output over {limits.output_bytes} bytes, program killed]".encode()
                break
    if status is None:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()) + 1.0)
        except subprocess.TimeoutExpired:
            status = "timeout"
    if status is not None:
        _kill(proc)
    proc.stdout.close()
    proc.wait()
    text = out.decode(errors="replace")
    if status is None:
        finished = f"\n{token}\n" in text
        text = text.replace(f"\n{token}\n", "")
        status = "passed" if proc.returncode == 0 and finished else "failed"
        if proc.returncode == 0 and not finished:
            text += "\n[sandbox: the program exited before its end (no completion token)]"
    return SandboxResult(status, None if status == "timeout" else proc.returncode, text[-2000:])


_checked: str | None = None
_check_lock = threading.Lock()


def check_available() -> str:
    """The path of a working ``bwrap``, after one trial run; raise :class:`SandboxUnavailable` if none."""
    global _checked
    with _check_lock:
        if _checked:
            return _checked
        bwrap = shutil.which("bwrap", path=os.environ.get("PATH", "") + ":/usr/bin:/bin")
        if not bwrap:
            raise SandboxUnavailable(f"running generated code needs the bubblewrap sandbox (bwrap): {INSTALL_HINT}")
        trial = _run("print('sandbox ok')\n", SandboxLimits(timeout_s=20), bwrap)
        if not trial.passed or "sandbox ok" not in trial.output:
            raise SandboxUnavailable(
                f"the bubblewrap sandbox does not work here ({trial.status}): {trial.output.strip()[-800:]}\n"
                f"It needs {INSTALL_HINT}, permission to create namespaces (as a non-root user: unprivileged "
                "user namespaces), and an interpreter that uid 65534 can read.")
        _checked = bwrap
        return bwrap


def run_python(program: str, limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Run ``program`` in the sandbox; passed = it ran to its end (exit status 0) within the limits."""
    return _run(program, limits, check_available())
