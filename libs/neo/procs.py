"""Child processes that must not outlive the process that started them."""

from __future__ import annotations

import contextlib
import signal
import sys


def die_with_parent() -> None:
    """``preexec_fn`` for a child: it gets SIGTERM when its parent dies (Linux ``PR_SET_PDEATHSIG``).

    A supervisor killed with SIGKILL (an OOM kill, ``docker kill``) cannot stop its children itself; without
    this they live on as orphans: a vLLM replica holding its port and memory, a training run writing into
    a directory another worker resumes.
    """
    if sys.platform != "linux":
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
