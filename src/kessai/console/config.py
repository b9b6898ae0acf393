"""The console's own settings: cookies, session lifetimes, lockout, page sizes.

They are read from ``KESSAI_CONSOLE_*`` environment variables, next to (not inside) the gateway's
``Settings``, so that the console can be tuned without touching the terminal API's configuration.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

ENV_PREFIX: Final = "KESSAI_CONSOLE_"
# Hosts where a plain-http console is a developer's own machine, not a deployment.
LOCAL_HOSTS: Final = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


def cookie_secure_default(public_url: str) -> bool:
    """Secure cookies unless the public URL is plain http on this machine.

    Browsers drop a ``Secure`` cookie set over http, so a console on http://127.0.0.1 could
    never keep a session; anywhere else the console must be behind https, and the cookie says so.
    """
    parts = urlsplit(public_url)
    return not (parts.scheme == "http" and (parts.hostname or "") in LOCAL_HOSTS)


@dataclass(frozen=True, slots=True)
class ConsoleConfig:
    """Limits and timings of the console. Each is ``KESSAI_CONSOLE_<NAME>`` in the environment."""

    cookie_secure: bool = True
    # A session ends after this much inactivity, and in any case this long after login.
    session_idle_seconds: int = 2 * 3600
    session_max_seconds: int = 12 * 3600
    # last_seen is written at most this often, so browsing does not write on every page.
    session_touch_seconds: int = 60
    # Live sessions one user may hold (a PC and a phone, say); the oldest ends beyond this.
    max_sessions_per_user: int = 10
    login_max_failures: int = 5
    login_lock_seconds: int = 15 * 60
    page_size: int = 50
    csv_max_rows: int = 100_000
    totals_max_days: int = 92

    @classmethod
    def from_env(cls, public_url: str, env: Mapping[str, str] | None = None) -> ConsoleConfig:
        """Defaults, then ``KESSAI_CONSOLE_*`` variables; the cookie flag follows the public URL.

        ``KESSAI_CONSOLE_COOKIE_SECURE`` is ``auto`` (the default), ``true`` or ``false``.
        """
        source = os.environ if env is None else env
        secure_raw = source.get(ENV_PREFIX + "COOKIE_SECURE", "auto").strip().lower()
        if secure_raw == "auto":
            secure = cookie_secure_default(public_url)
        else:
            secure = secure_raw in ("1", "true", "yes", "on")
        numbers: dict[str, int] = {}
        for name in (
            "session_idle_seconds",
            "session_max_seconds",
            "session_touch_seconds",
            "max_sessions_per_user",
            "login_max_failures",
            "login_lock_seconds",
            "page_size",
            "csv_max_rows",
            "totals_max_days",
        ):
            raw = source.get(ENV_PREFIX + name.upper())
            if raw is not None:
                value = int(raw)
                if value < 1:
                    raise ValueError(f"{ENV_PREFIX}{name.upper()} must be a positive integer")
                numbers[name] = value
        return cls(cookie_secure=secure, **numbers)
