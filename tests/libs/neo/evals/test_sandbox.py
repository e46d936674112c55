from neo.evals.sandbox import SandboxLimits, run_python


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
