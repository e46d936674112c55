"""neo.net: free ports and waiting for a process's HTTP endpoint, against real processes."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from neo.net import NotHealthy, free_port, wait_http


def test_waits_for_a_server_that_starts_late_then_returns():
    port = free_port()
    code = ("import time, http.server as h; time.sleep(1); "
            f"h.test(h.SimpleHTTPRequestHandler, port={port}, bind='127.0.0.1')")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        start = time.monotonic()
        wait_http(f"http://127.0.0.1:{port}/", proc, timeout_s=30)
        assert time.monotonic() - start >= 0.9 and proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_process_that_exits_first_fails_fast_with_its_status():
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    start = time.monotonic()
    with pytest.raises(NotHealthy, match="exited with status 3"):
        wait_http(f"http://127.0.0.1:{free_port()}/health", proc, timeout_s=30)
    assert time.monotonic() - start < 10


def test_nothing_listening_times_out():
    with pytest.raises(NotHealthy, match="did not answer 200 within 1 s"):
        wait_http(f"http://127.0.0.1:{free_port()}/health", timeout_s=1)
