"""Every tunable limit of the gateway, with its default and its unit in its name."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, fields, replace
from typing import Final

ENV_PREFIX: Final = "KESSAI_"
LOG_LEVEL_VARIABLE: Final = "KESSAI_LOG_LEVEL"
# Settings that may be 0; every other number must be positive. 0 writes last_seen on every
# call, and turns the per-address login limit off.
_ZERO_ALLOWED: Final = frozenset({"session_touch_interval_seconds", "login_address_max_failures"})
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


class SettingsError(ValueError):
    """A setting with a value it cannot take; the message names its ``KESSAI_*`` variable."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Limits and timings. Each can be set from the environment as ``KESSAI_<NAME>`` (upper)."""

    # A terminal logs in once; its session ends on LOGOUT, an admin logout, or this much idleness.
    session_idle_timeout_seconds: int = 24 * 3600
    # last_seen is written at most this often per session, so polling does not write on every call.
    session_touch_interval_seconds: int = 60
    login_max_failures: int = 5
    login_lock_seconds: int = 15 * 60
    # Failed logins (terminal LOGIN and console login together) one client address may make in
    # any window of this many seconds; then one more each window/max. See service/ratelimit.py.
    login_address_max_failures: int = 20
    login_address_window_seconds: int = 600
    passcode_max_failures: int = 5
    passcode_lock_seconds: int = 30 * 60
    qr_ttl_default_seconds: int = 300
    qr_ttl_min_seconds: int = 30
    qr_ttl_max_seconds: int = 1800
    # PAYCHECK/STATUS ask the provider about a PENDING payment at most this often.
    provider_recheck_interval_ms: int = 1000
    # The longest one provider call may take before its outcome is taken as unknown; each
    # provider's own read timeout (PayPay advises 30 s for creating) applies within it.
    provider_timeout_seconds: float = 30.0
    # "Not found" at the provider means "never arrived" only once the request is this old;
    # before that the provider may still be processing it.
    provider_not_found_grace_seconds: int = 60
    # An outcome still unknown this long after the payment began is cancelled (reversed) at the
    # provider, as Alipay+ and WeChat Pay advise (about a minute), and FAILED once confirmed.
    provider_give_up_seconds: int = 60
    # Workers: how often a PENDING payment is re-checked when nobody polls it, how many
    # payments or events one batch takes, and how long one job may run.
    worker_recheck_interval_ms: int = 3000
    worker_batch_size: int = 100
    worker_job_seconds: float = 20.0
    worker_idle_sleep_ms: int = 500
    # Webhook retries: the first after this many seconds, then doubling up to an hour.
    webhook_first_retry_seconds: float = 10.0
    # Run the background jobs inside every `kessai serve` process as well.
    worker_in_serve: bool = False
    # Retention of housekeeping rows (payments and the audit trail are never pruned).
    session_retention_days: int = 30
    sandbox_code_retention_days: int = 7
    # Sandbox: how long a "timeout" outcome hides its true result from queries.
    sandbox_reveal_after_seconds: float = 3.0
    max_body_bytes: int = 16 * 1024
    # `kessai serve --workers N` with at least as many workers as CPUs keeps each worker on one
    # CPU (kessai.cli.supervise.worker_cpus). Turn off where other busy processes share the CPUs.
    pin_workers: bool = True
    # The externally visible base URL, used in sandbox qrData links.
    public_url: str = "http://127.0.0.1:8000"
    # The sandbox wallets: their pages, and payments of services a merchant has no provider
    # account for. Off unless asked for (`kessai demo` turns it on): a sandbox code "pays"
    # without moving money, so it must never answer for a real shop by default.
    sandbox_enabled: bool = False

    def __post_init__(self) -> None:
        # Every limit is checked once, wherever the settings come from: a negative batch size
        # would read as "no limit" in SQL, a zero timeout as "give up at once".
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if not math.isfinite(value):
                raise SettingsError(f"{_variable(f.name)} must be a finite number, not {value}")
            if value < 0 or (value == 0 and f.name not in _ZERO_ALLOWED):
                least = "0 or more" if f.name in _ZERO_ALLOWED else "more than 0"
                raise SettingsError(f"{_variable(f.name)} must be {least}, not {value}")
        if not self.qr_ttl_min_seconds <= self.qr_ttl_default_seconds <= self.qr_ttl_max_seconds:
            raise SettingsError(
                f"{_variable('qr_ttl_default_seconds')} must lie between "
                f"{_variable('qr_ttl_min_seconds')} and {_variable('qr_ttl_max_seconds')}"
            )

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Defaults, then ``KESSAI_*`` variables, then explicit overrides.

        A variable that is not a value of its setting's kind (a number, or a yes/no such as
        ``true``/``false``), or is out of its range, raises ``SettingsError`` naming it.
        """
        values: dict[str, object] = {}
        defaults = cls()
        for f in fields(cls):
            raw = os.environ.get(_variable(f.name))
            if raw is None or not raw.strip():
                continue  # unset, or set to nothing: the default
            kind = type(getattr(defaults, f.name))
            values[f.name] = parse_value(_variable(f.name), kind, raw.strip())
        values.update({k: v for k, v in overrides.items() if v is not None})
        return replace(defaults, **values)  # type: ignore[arg-type]


def _variable(name: str) -> str:
    """The environment variable of a setting."""
    return ENV_PREFIX + name.upper()


def parse_value(variable: str, kind: type, raw: str) -> object:
    """A variable's text as a value of ``kind`` (bool, int, float or str), or a SettingsError."""
    if kind is bool:
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise SettingsError(f"{variable} must be true or false, not {raw!r}")
    if kind is str:
        return raw
    try:
        return kind(raw)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise SettingsError(f"{variable} must be {what}, not {raw!r}") from None


def log_level_from_env() -> str:
    """``KESSAI_LOG_LEVEL`` as a level name (``INFO`` when unset or empty), or a SettingsError."""
    raw = os.environ.get(LOG_LEVEL_VARIABLE, "").strip()
    if not raw:
        return "INFO"  # unset, or set to nothing
    if raw.upper() not in logging.getLevelNamesMapping():
        raise SettingsError(
            f"{LOG_LEVEL_VARIABLE} must be DEBUG, INFO, WARNING, ERROR or CRITICAL, not {raw!r}"
        )
    return raw.upper()
