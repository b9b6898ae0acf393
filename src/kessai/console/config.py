"""The console's own settings: cookies, session lifetimes, lockout, page sizes.

They are read from ``KESSAI_CONSOLE_*`` environment variables, next to (not inside) the gateway's
``Settings``, so that the console can be tuned without touching the terminal API's configuration.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Final
from urllib.parse import urlsplit

from kessai.config import SettingsError, parse_value

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

    def __post_init__(self) -> None:
        # Checked wherever the config comes from, as the gateway's Settings are.
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int) and not isinstance(value, bool) and value < 1:
                raise SettingsError(f"{_variable(f.name)} must be more than 0, not {value}")

    @classmethod
    def from_env(cls, public_url: str, env: Mapping[str, str] | None = None) -> ConsoleConfig:
        """Defaults, then ``KESSAI_CONSOLE_*`` variables; the cookie flag follows the public URL.

        ``KESSAI_CONSOLE_COOKIE_SECURE`` is ``auto`` (the default) or a yes/no such as
        ``true``/``false``. A variable set to nothing counts as unset; a value its setting cannot
        take raises ``SettingsError`` naming the variable, as the gateway's settings do.
        """
        source = os.environ if env is None else env
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = source.get(_variable(f.name), "").strip()
            if not raw:
                continue  # unset, or set to nothing: the default
            if f.name == "cookie_secure":
                values[f.name] = _cookie_secure(raw, public_url)
            else:
                values[f.name] = parse_value(_variable(f.name), int, raw)
        values.setdefault("cookie_secure", cookie_secure_default(public_url))
        return cls(**values)  # type: ignore[arg-type]


def _variable(name: str) -> str:
    """The environment variable of a console setting."""
    return ENV_PREFIX + name.upper()


def _cookie_secure(raw: str, public_url: str) -> bool:
    """``KESSAI_CONSOLE_COOKIE_SECURE``: ``auto`` follows the public URL, else a yes/no."""
    if raw.lower() == "auto":
        return cookie_secure_default(public_url)
    variable = _variable("cookie_secure")
    try:
        return bool(parse_value(variable, bool, raw))
    except SettingsError:
        raise SettingsError(f"{variable} must be auto, true or false, not {raw!r}") from None
