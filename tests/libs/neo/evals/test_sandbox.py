"""The HumanEval sandbox: ordinary programs are scored as before; hostile ones stay contained."""

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from neo.evals import sandbox
from neo.evals.sandbox import SandboxLimits, SandboxUnavailable, run_python

REPO = Path(__file__).resolve().parents[4]


def test_passing_and_failing_programs():
    assert run_python("assert 1 + 1 == 2\nprint('ok')").passed
    failed = run_python("assert 1 + 1 == 3, 'bad math'")
    assert failed.status == "failed" and "bad math" in failed.output


def test_infinite_loop_times_out_and_is_killed():
    result = run_python("while True:\n    pass\n", SandboxLimits(timeout_s=1.0))
    assert result.status == "timeout"


def test_memory_bomb_fails_instead_of_eating_the_machine():
    result = run_python("x = bytearray(4 << 30)\n", SandboxLimits(memory_bytes=256 << 20))
    assert result.status == "failed" and "MemoryError" in result.output


def test_runs_isolated_in_an_empty_directory():
    program = "import os, sys\nassert os.listdir('.') == ['program.py'], os.listdir('.')\nassert sys.flags.isolated\n"
    assert run_python(program).passed


def test_file_size_limit():
    result = run_python("open('big', 'wb').write(b'x' * (64 << 20))\n", SandboxLimits(file_bytes=1 << 20))
    assert result.status == "failed"


def test_private_tmp_is_size_capped():
    program = "for i in range(64):\n    open(f'f{i}', 'wb').write(b'x' * (1 << 20))\n"
    result = run_python(program, SandboxLimits(disk_bytes=8 << 20))
    assert result.status == "failed" and "No space left on device" in result.output


def test_runs_as_nobody_without_capabilities():
    program = ("import os\nassert os.getresuid() == (65534, 65534, 65534), os.getresuid()\n"
               "assert os.getresgid() == (65534, 65534, 65534), os.getresgid()\n"
               "status = open('/proc/self/status').read()\n"
               "assert 'CapEff:\\t0000000000000000' in status and 'NoNewPrivs:\\t1' in status, status\n")
    result = run_python(program)
    assert result.passed, result.output


# --- completion: exiting early with status 0 is not a pass ---------------------------------------------

@pytest.mark.parametrize("exit_early", ["import os\nos._exit(0)", "import sys\nsys.exit(0)", "raise SystemExit"])
def test_exiting_before_the_checks_is_not_a_pass(exit_early):
    result = run_python(f"{exit_early}\nassert False, 'the checks never ran'\n")
    assert result.status == "failed", result
    assert "exited before its end" in result.output


def test_a_completion_that_exits_before_humaneval_checks_fails():
    program = ("def add(a, b):\n    import os; os._exit(0)\n\n"
               "def check(candidate):\n    assert candidate(2, 3) == 5\n\ncheck(add)\n")
    assert not run_python(program).passed


def test_output_is_capped():
    t0 = time.monotonic()
    result = run_python("while True:\n    print('x' * 1000)\n", SandboxLimits(timeout_s=20, output_bytes=64 << 10))
    assert result.status == "failed" and "output over" in result.output
    assert time.monotonic() - t0 < 10 and len(result.output) <= 2000


# --- hostile programs ---------------------------------------------------------------------------------

def test_cannot_write_files_outside_the_sandbox(tmp_path):
    name = f"neo-sandbox-escape-{secrets.token_hex(4)}"
    targets = [REPO / name, tmp_path / name, Path.home() / name, Path("/etc") / name]
    try:
        for target in targets:
            result = run_python(f"open({str(target)!r}, 'w').write('pwned')\n")
            assert result.status == "failed", (target, result)
            assert not target.exists(), target
    finally:
        for target in targets:
            if target.exists():
                target.unlink()


def test_cannot_delete_files_outside_the_sandbox(tmp_path):
    victims = [tmp_path / "victim.txt", REPO / f".neo-sandbox-victim-{secrets.token_hex(4)}"]
    try:
        for victim in victims:
            victim.write_text("keep me")
            result = run_python(f"import os\nos.remove({str(victim)!r})\n")
            assert result.status == "failed", (victim, result)
            assert victim.read_text() == "keep me"
    finally:
        victims[1].unlink(missing_ok=True)


def test_cannot_reach_the_network():
    with socket.socket() as listener:  # a server of the test's own on the host's loopback
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        for target in [("127.0.0.1", port), ("127.0.0.1", 6379)]:  # and Redis, where it runs
            program = f"import socket\nsocket.create_connection({target!r}, timeout=2).close()\nprint('connected')\n"
            result = run_python(program)
            assert result.status == "failed" and "connected" not in result.output, (target, result)
        with pytest.raises(BlockingIOError):
            listener.accept()


LEAK = """\
import os
found = [f"{k}={v}" for k, v in os.environ.items() if k.startswith("NEO_")]
for pid in [str(os.getppid())] + [p for p in os.listdir("/proc") if p.isdigit()]:
    try:
        blob = open(f"/proc/{pid}/environ", "rb").read().decode(errors="replace")
    except OSError:
        continue
    found += [var for var in blob.split("\\0") if var.startswith(("NEO_SANDBOX_SECRET=", "NEO_API_KEY="))]
print(found)
"""


def test_parent_environment_does_not_leak():
    """The parent's secrets (an API key in its environment) are not readable: not inherited, and not in
    /proc/<ppid>/environ (the sandbox has its own PID namespace and runs as another uid)."""
    secret = secrets.token_hex(16)
    driver = ("import sys\nfrom neo.evals.sandbox import run_python\n"
              "r = run_python(sys.stdin.read())\nprint(r.status, r.output)\n")
    out = subprocess.run([sys.executable, "-c", driver], input=LEAK, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "NEO_SANDBOX_SECRET": secret, "NEO_API_KEY": secret})
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("passed"), out.stdout  # the program ran and looked
    assert secret not in out.stdout


def _alive(marker: str) -> list[str]:
    """Host processes whose command line contains ``marker``."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(pid)
        except OSError:
            pass
    return pids


def _gone(marker: str, within: float = 3.0) -> bool:
    deadline = time.monotonic() + within
    while _alive(marker):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


SETSID = """\
import os
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv({sleep!r}, ["sleep", {marker!r}])  # holds the inherited stdout pipe open for 30 s
    os._exit(0)
{rest}
"""


@pytest.mark.parametrize("rest", ["while True:\n    pass", "print('main program done')"])
def test_setsid_grandchild_neither_outlives_nor_stretches_the_run(rest):
    marker = f"30.{secrets.randbelow(10**6):06d}"
    program = SETSID.format(sleep=shutil.which("sleep"), marker=marker, rest=rest)
    t0 = time.monotonic()
    result = run_python(program, SandboxLimits(timeout_s=2.0))
    elapsed = time.monotonic() - t0
    assert result.status == ("timeout" if "while" in rest else "passed"), result
    assert elapsed < 5, elapsed
    assert _gone(marker), f"the grandchild sleeping {marker} s survived the sandbox"


FORKS = """\
import os, time
n = 0
try:
    for _ in range(200):
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
        n += 1
except OSError as exc:
    print("fork refused:", exc)
print("forks", n)
"""


def test_process_limit_stops_fork_bombs():
    t0 = time.monotonic()
    result = run_python(FORKS, SandboxLimits(timeout_s=5.0, processes=16))
    assert result.passed, result
    forks = int(result.output.split("forks")[-1])
    assert forks < 16 and "fork refused" in result.output
    assert time.monotonic() - t0 < 5  # the sleeping children died with the sandbox, they held nothing up


def test_missing_bwrap_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(sandbox, "_checked", None)
    monkeypatch.setattr(sandbox.shutil, "which", lambda *a, **k: None)
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap"):
        run_python("print('never runs')\n")


NON_ROOT = """\
import json, sys, types
sb = sys.modules["sandbox"] = types.ModuleType("sandbox")
exec(compile(sys.stdin.read(), "sandbox.py", "exec"), sb.__dict__)
out = {}
for name, program in json.loads(sys.argv[1]).items():
    r = sb.run_python(program, sb.SandboxLimits(timeout_s=5.0, processes=16))
    out[name] = [r.status, r.output]
print(json.dumps(out))
"""


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv") or not os.access("/usr/bin/python3", os.X_OK),
                    reason="needs root, setpriv and /usr/bin/python3 to start a run as an ordinary user")
def test_non_root_user_runs_in_a_user_namespace():
    """The same guarantees when `neo eval` is run by an ordinary user (here uid 65534 itself): bwrap
    then makes a user namespace, and the process limit counts the sandbox's processes."""
    escape = Path("/tmp") / f"neo-sandbox-escape-{secrets.token_hex(4)}"  # world-writable on the host
    programs = {"uid": "import os\nassert os.getuid() == 65534\nprint(os.listdir('.'))\n",
                "exit": "import os\nos._exit(0)\n", "forks": FORKS,
                "net": "import socket\nsocket.create_connection(('127.0.0.1', 6379), timeout=2)\n",
                "write": f"open({str(escape)!r}, 'w').write('pwned')\nassert open({str(escape)!r}).read() == 'pwned'\n"}
    user = ["setpriv", "--reuid", "65534", "--regid", "65534", "--groups", "100,65534"]  # with a group as users have
    out = subprocess.run([*user, "/usr/bin/python3", "-I", "-c", NON_ROOT, json.dumps(programs)],
                         input=Path(sandbox.__file__).read_text(), capture_output=True, text=True, timeout=120, cwd="/")
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout)
    assert results["uid"] == ["passed", "['program.py']\n"]
    assert results["exit"][0] == results["net"][0] == "failed"
    assert results["write"][0] == "passed" and not escape.exists()  # it wrote to its private /tmp
    assert results["forks"][0] == "passed" and int(results["forks"][1].split("forks")[-1]) < 16
