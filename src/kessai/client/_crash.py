"""A testing hook: die at a chosen instant, the way a power cut or ``kill -9`` would.

Set ``KESSAI_POS_CRASH_AT`` to one of the points below, and the process that reaches that point
sends itself SIGKILL: no ``finally`` blocks, no flushing, no clean-up. The crash tests use it to
prove that ``recover()`` ends every such crash with the journal agreeing with the gateway.

- ``after_intent``: the payment's (or refund's) intent is journaled; nothing has been sent.
- ``after_send``: the gateway has answered (it may have charged); the answer is not journaled.

Never set it in production.
"""

from __future__ import annotations

import os
import signal
from typing import Final

CRASH_ENV: Final = "KESSAI_POS_CRASH_AT"
CRASH_POINTS: Final = ("after_intent", "after_send")


def crash_point(name: str) -> None:
    """Kill this process here when ``KESSAI_POS_CRASH_AT`` names ``name``."""
    if os.environ.get(CRASH_ENV) != name:
        return
    kill = getattr(signal, "SIGKILL", None)
    if kill is not None:
        os.kill(os.getpid(), kill)
    os._exit(137)  # where there is no SIGKILL: still no clean-up at all
