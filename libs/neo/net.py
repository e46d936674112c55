"""Local ports and readiness checks for the processes Neo starts (``neo up``, benches, tests)."""

from __future__ import annotations

import socket
import subprocess
import time


class NotHealthy(RuntimeError):
    """A service did not answer 200 in time, or its process exited first."""


def redact_url(url: str) -> str:
    """``url`` without its password (``redis://:secret@host`` → ``redis://:***@host``), for messages and logs."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def hide_password(text: str, url: str) -> str:
    """``text`` (an error message, say) with the password of ``url`` replaced by ``***``."""
    from urllib.parse import urlsplit

    try:
        secret = urlsplit(url).password
    except ValueError:
        return text
    return text.replace(secret, "***") if secret else text


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen | None = None, timeout_s: float = 120.0,
              interval_s: float = 0.2) -> None:
    """Poll ``url`` until it answers 200. Raises ``NotHealthy`` when ``proc`` (the process that should
    serve it) exits first or ``timeout_s`` passes; callers add where the process's log is."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise NotHealthy(f"the process for {url} exited with status {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(interval_s)
    raise NotHealthy(f"{url} did not answer 200 within {timeout_s:.0f} s")
