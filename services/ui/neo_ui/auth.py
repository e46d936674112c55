"""Logins for both apps: one account list, one session for /chat and /label, failed logins rate-limited.

With accounts (``NEO_UI_USERS``) both Gradio apps are mounted with ``auth=Accounts(...)``:

- passwords are compared in constant time (``hmac.compare_digest`` of SHA-256 digests, so the length does
  not show either; an unknown name is compared against a random digest and counted like a known one, so
  neither the time nor a lockout tells which names exist);
- ``ui_login_max_failures`` failed logins for one account name within ``ui_login_window_s`` seconds, or
  ``CLIENT_FACTOR`` times as many from one client address (``LoginThrottle``, an ASGI middleware on the
  ``.../login`` POSTs), and further logins for that name / from that address are refused with 429 and a
  ``Retry-After`` until the oldest of those failures leaves the window, a correct password included;
- ``share_sessions`` gives both mounted apps one cookie name and one token table, so a login on /chat/
  is a login on /label/ and a logout on either ends both.

Lockouts live in this process's memory: a restart forgets them. A name under attack is locked for its
owner too (the price of a per-name limit); the owner gets in once the window has passed.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable

from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

CLIENT_FACTOR = 4  # one client address (a proxy, an office NAT) may fail this many times more than one name
MAX_TRACKED = 10_000  # names / client addresses remembered at most (expired ones are dropped first)


class FailureWindow:
    """Failures per key (an account name, a client address) in a sliding window of ``window_s`` seconds."""

    def __init__(self, max_failures: int, window_s: float, clock: Callable[[], float] = time.monotonic):
        self.max_failures, self.window_s, self.clock = max_failures, window_s, clock
        self.failures: dict[str, deque[float]] = {}
        self.lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self.failures.get(key, deque())
        while times and times[0] <= now - self.window_s:
            times.popleft()
        return times

    def retry_after(self, key: str) -> float:
        """0 when ``key`` may try; else the seconds until its oldest counted failure leaves the window."""
        with self.lock:
            now = self.clock()
            times = self._recent(key, now)
            if not times:
                self.failures.pop(key, None)
            if len(times) < self.max_failures:
                return 0.0
            return times[-self.max_failures] + self.window_s - now

    def fail(self, key: str) -> None:
        with self.lock:
            now = self.clock()
            if key not in self.failures and len(self.failures) >= MAX_TRACKED:
                for other in [k for k, t in self.failures.items() if not t or t[-1] <= now - self.window_s]:
                    del self.failures[other]
                if len(self.failures) >= MAX_TRACKED:  # still full: forget the longest-quiet key
                    del self.failures[min(self.failures, key=lambda k: self.failures[k][-1])]
            times = self._recent(key, now)
            times.append(now)
            self.failures[key] = times

    def clear(self, key: str) -> None:
        with self.lock:
            self.failures.pop(key, None)


def _digest(password: str) -> bytes:
    return hashlib.sha256(password.encode()).digest()


def refused(what: str, wait: float) -> HTTPException:
    seconds = max(1, math.ceil(wait))
    return HTTPException(status_code=429, headers={"Retry-After": str(seconds)},
                         detail=f"Too many failed logins {what}: try again in {seconds} s.")


class Accounts:
    """Gradio's ``auth`` callable: (name, password) → bool, in constant time, with a per-name lockout."""

    def __init__(self, accounts: list[tuple[str, str]], max_failures: int, window_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.digests = {name: _digest(password) for name, password in accounts}
        self.names = FailureWindow(max_failures, window_s, clock)
        self.clients = FailureWindow(max_failures * CLIENT_FACTOR, window_s, clock)
        self.dummy = secrets.token_bytes(32)

    def __call__(self, username: str, password: str) -> bool:
        wait = self.names.retry_after(username)
        if wait > 0:
            log.warning("login for %r refused: locked after too many failures (%.0f s left)", username, wait)
            raise refused("for this account", wait)
        known = username in self.digests
        ok = hmac.compare_digest(_digest(password), self.digests.get(username, self.dummy)) and known
        if ok:
            self.names.clear(username)
        else:
            self.names.fail(username)
            log.warning("failed login for %r", username)
        return ok


class LoginThrottle:
    """ASGI middleware: a ``POST .../login`` from a client address with too many recent failures gets 429
    without being tried; a refused login (Gradio answers 400) counts against its address."""

    def __init__(self, app: ASGIApp, accounts: Accounts):
        self.app, self.accounts = app, accounts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].rstrip("/").endswith("/login"):
            await self.app(scope, receive, send)
            return
        client = scope["client"][0] if scope.get("client") else "unknown"
        wait = self.accounts.clients.retry_after(client)
        if wait > 0:
            log.warning("login from %s refused: too many failures (%.0f s left)", client, wait)
            error = refused("from your address", wait)
            await JSONResponse({"detail": error.detail}, status_code=error.status_code,
                               headers=error.headers)(scope, receive, send)
            return
        status = 0

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, receive, send_status)
        if status == 400:
            self.accounts.clients.fail(client)


def share_sessions(app: FastAPI, *paths: str) -> None:
    """Give the Gradio apps mounted at ``paths`` one login cookie and one token table (a login on one is a
    login on all). Gradio keeps both per mounted app (``cookie_id``, ``tokens``) and reads them per request."""
    mounted = {route.path: route.app for route in app.routes if isinstance(route, Mount)}
    apps = [mounted[path] for path in paths]
    first = apps[0]
    if not all(hasattr(a, "cookie_id") and isinstance(getattr(a, "tokens", None), dict) for a in apps):
        raise RuntimeError("this Gradio version keeps no cookie_id/tokens per app: update neo_ui.auth.share_sessions")
    for other in apps[1:]:
        other.cookie_id, other.tokens = first.cookie_id, first.tokens
