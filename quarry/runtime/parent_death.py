"""Children that stop when the process that started them dies, even under kill -9.

On Linux a child asks the kernel for SIGTERM when its parent dies (prctl
PR_SET_PDEATHSIG), so each stops as after Ctrl-C: `quarry up`'s services
(quarry/cli/supervisor.py) and the gateway's workers (gateway/workers.py). Elsewhere
children outlive their parent.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_parent() -> Callable[[], None] | None:
    """A Popen preexec_fn that makes the child get SIGTERM when this process dies (Linux);
    None elsewhere.

    The kernel sends it when the thread that started the child ends, so start children
    from a thread that lives as long as the process (the main thread).
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, not in the child
    parent = os.getpid()

    def in_child() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return in_child
