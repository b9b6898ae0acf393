"""Where a terminal's settings come from: arguments, then the environment, then a config file.

The master data the guide tells a terminal to keep (mid, key, password, passCode) and the
integration's os live in a TOML file written with owner-only permissions::

    url = "https://pay.example.com"
    mid = "1234567890123456"
    password = "Ab3dEf6hIj9k"
    os = "834003"
    pass_code = "1234"          # optional: refunds ask for it when it is not here
    key = "AA:BB:CC:DD:EE:FF"   # optional: this machine's MAC address by default
    journal = "/var/lib/kessai/journal.db"

    [poll]                      # optional: how wait() polls PAYCHECK
    interval_s = 2.0

    [retry]                     # optional: how failed requests are retried
    max_attempts = 4

Environment variables (``KESSAI_TERMINAL_URL``, ``…_MID``, ``…_KEY``, ``…_PASSWORD``, ``…_OS``,
``…_PASSCODE``, ``…_JOURNAL``) win over the file, and arguments win over both. The file is
``$KESSAI_TERMINAL_CONFIG``, else ``$XDG_CONFIG_HOME/kessai/terminal.toml``.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Final

from kessai.client.exceptions import ConfigurationError

ENV_PREFIX: Final = "KESSAI_TERMINAL_"
CONFIG_ENV: Final = ENV_PREFIX + "CONFIG"

# The guide's formats (docs/api.md), checked before anything is sent.
_FORMATS: Final[dict[str, tuple[re.Pattern[str], str]]] = {
    "mid": (re.compile(r"[0-9]{16}"), "16 digits"),
    "key": (re.compile(r"[A-Za-z0-9:\-]{1,50}"), "1 to 50 letters, digits, ':' or '-'"),
    "password": (re.compile(r"[A-Za-z0-9]{12}"), "12 letters or digits"),
    "os": (re.compile(r"[0-9]{6}"), "6 digits"),
    "pass_code": (re.compile(r"[0-9]{4}"), "4 digits"),
}

# The settings a file or the environment may hold, by their names there.
_FILE_KEYS: Final = {
    "url": "base_url",
    "mid": "mid",
    "key": "key",
    "password": "password",
    "os": "os",
    "pass_code": "pass_code",
    "journal": "journal_path",
    "timeout_s": "timeout_s",
    "connect_timeout_s": "connect_timeout_s",
    "not_found_grace_s": "not_found_grace_s",
}
_ENV_KEYS: Final = {
    "URL": "base_url",
    "MID": "mid",
    "KEY": "key",
    "PASSWORD": "password",
    "OS": "os",
    "PASSCODE": "pass_code",
    "JOURNAL": "journal_path",
}


def _xdg(variable: str, fallback: str) -> Path:
    base = os.environ.get(variable)
    return Path(base) if base else Path.home() / fallback


def default_config_path() -> Path:
    """``$KESSAI_TERMINAL_CONFIG``, else ``$XDG_CONFIG_HOME/kessai/terminal.toml``."""
    explicit = os.environ.get(CONFIG_ENV)
    if explicit:
        return Path(explicit)
    return _xdg("XDG_CONFIG_HOME", ".config") / "kessai" / "terminal.toml"


def default_journal_path() -> Path:
    """``$XDG_STATE_HOME/kessai/journal.db`` (``~/.local/state/kessai/journal.db``)."""
    return _xdg("XDG_STATE_HOME", ".local/state") / "kessai" / "journal.db"


def machine_key() -> str | None:
    """A stable unique ID of this machine: its MAC address, else its systemd machine-id.

    ``uuid.getnode()`` falls back to a random number with the multicast bit set when it finds
    no hardware address; such a number changes on every start, so it is not used.
    """
    node = uuid.getnode()
    if not node & (1 << 40):
        return ":".join(f"{(node >> shift) & 0xFF:02X}" for shift in range(40, -1, -8))
    for path in (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id")):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if re.fullmatch(r"[0-9a-f]{32}", text):
            return text
    return None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How the SDK retries what is safe to retry: capped exponential backoff with jitter.

    Only connection errors, timeouts, 5xx and 429 answers are retried, and every retry sends the
    same transKey/refundKey, so a retry never pays or refunds twice. Bounded twice: by the number
    of attempts and by the time spent.
    """

    max_attempts: int = 4  # the first try included
    base_delay_s: float = 0.25
    max_delay_s: float = 4.0
    max_elapsed_s: float = 30.0

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= 20:
            raise ConfigurationError("retry max_attempts must be 1 to 20")
        if not 0 <= self.base_delay_s <= self.max_delay_s <= 300:
            raise ConfigurationError("retry delays must satisfy 0 <= base <= max <= 300 s")

    def backoff_s(self, retry: int, unit: float) -> float:
        """The pause before retry number ``retry`` (1-based); ``unit`` is a random in [0, 1).

        "Equal jitter": half of the capped exponential step is fixed, half is random, so that
        registers that failed together do not retry together, yet none retries at once.
        """
        step = min(self.max_delay_s, self.base_delay_s * 2.0 ** (retry - 1))
        return float(step / 2 + unit * step / 2)


@dataclass(frozen=True, slots=True)
class PollSchedule:
    """How ``wait()`` polls PAYCHECK for a payment that is not final yet.

    The defaults follow the wallet providers' advice: PayPay polls every 2-3 s, Alipay+ every
    3 s for about a minute, WeChat Pay every 2 s for 30 s and then every 5 s up to about 90 s.
    The gateway asks the wallet at most once a second whatever the number of polls, so polling
    faster gains nothing.
    """

    first_delay_s: float = 1.0
    interval_s: float = 2.0
    slow_after_s: float = 30.0
    slow_interval_s: float = 5.0
    timeout_s: float = 90.0  # wait()'s default timeout
    max_polls: int = 120  # a hard bound, whatever the timeout

    def __post_init__(self) -> None:
        if min(self.first_delay_s, self.interval_s, self.slow_interval_s) <= 0:
            raise ConfigurationError("poll intervals must be positive")
        if self.timeout_s < 0 or not 1 <= self.max_polls <= 10_000:
            raise ConfigurationError("poll timeout_s must be >= 0 and max_polls 1 to 10000")

    def delay_s(self, polls_done: int, elapsed_s: float) -> float:
        """The pause before the next poll, after ``polls_done`` polls and ``elapsed_s``."""
        if polls_done <= 1:
            return self.first_delay_s
        return self.interval_s if elapsed_s < self.slow_after_s else self.slow_interval_s


@dataclass(frozen=True, slots=True)
class TerminalConfig:
    """A terminal's settings. ``load()`` builds one from arguments, environment and file."""

    base_url: str
    mid: str
    password: str = field(repr=False)
    os: str
    key: str | None = None  # None: this machine's MAC address (see machine_key())
    pass_code: str | None = field(default=None, repr=False)
    journal_path: Path | None = None  # None: default_journal_path()
    # Per request; the gateway bounds each provider call by its KESSAI_PROVIDER_TIMEOUT_SECONDS
    # (30 s by default), so a call that reaches a provider may take about as long.
    timeout_s: float = 30.0
    connect_timeout_s: float = 5.0
    # A STATUS "not found" for a request that may have left is taken as "never arrived" only
    # this long after it was sent: until then it could still be on its way.
    not_found_grace_s: float = 120.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    poll: PollSchedule = field(default_factory=PollSchedule)

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigurationError(f"the gateway URL must start with http(s)://: {self.base_url}")
        for name, (pattern, description) in _FORMATS.items():
            value = getattr(self, name)
            if value is not None and not pattern.fullmatch(value):
                raise ConfigurationError(f"{name} must be {description}")
        if self.timeout_s <= 0 or self.connect_timeout_s <= 0 or self.not_found_grace_s < 0:
            raise ConfigurationError("timeouts must be positive")

    @property
    def device_key(self) -> str:
        """The ``key`` sent with LOGIN: configured, else this machine's ID."""
        if self.key is not None:
            return self.key
        found = machine_key()
        if found is None:
            raise ConfigurationError(
                "this machine has no MAC address or machine-id to use as the terminal key; "
                "set key (KESSAI_TERMINAL_KEY) to a unique ID of this device"
            )
        return found

    @property
    def journal(self) -> Path:
        """The journal file this terminal writes."""
        return self.journal_path or default_journal_path()

    @classmethod
    def load(
        cls,
        config_file: str | Path | None = None,
        *,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> TerminalConfig:
        """Settings from ``overrides``, then ``KESSAI_TERMINAL_*`` variables, then the file.

        ``config_file`` defaults to ``default_config_path()``; a missing default file is fine,
        a missing file named explicitly is an error. Overrides that are None are ignored.
        """
        environ = os.environ if env is None else env
        path = Path(config_file) if config_file is not None else default_config_path()
        values: dict[str, Any] = {}
        if path.exists():
            values.update(read_config_file(path))
        elif config_file is not None:
            raise ConfigurationError(f"no config file at {path}")
        for suffix, name in _ENV_KEYS.items():
            raw = environ.get(ENV_PREFIX + suffix)
            if raw:
                values[name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigurationError(f"unknown settings: {', '.join(sorted(unknown))}")
        missing = [name for name in ("base_url", "mid", "password", "os") if not values.get(name)]
        if missing:
            raise ConfigurationError(
                f"missing settings: {', '.join(missing)} (pass them, set "
                f"{ENV_PREFIX}<NAME>, or run `kessai-pos configure`)"
            )
        if values.get("journal_path") is not None:
            values["journal_path"] = Path(values["journal_path"]).expanduser()
        return cls(**values)

    def with_overrides(self, **changes: Any) -> TerminalConfig:
        """A copy with some settings changed (None values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def _sub_table(table: Any, kind: type[RetryPolicy] | type[PollSchedule], name: str) -> Any:
    if not isinstance(table, dict):
        raise ConfigurationError(f"[{name}] must be a table")
    allowed = {f.name for f in fields(kind)}
    unknown = set(table) - allowed
    if unknown:
        raise ConfigurationError(f"unknown settings in [{name}]: {', '.join(sorted(unknown))}")
    return kind(**table)


def read_config_file(path: Path) -> dict[str, Any]:
    """The settings in a TOML config file, by TerminalConfig's field names."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"cannot read the config file {path}: {exc}") from exc
    values: dict[str, Any] = {}
    for name, value in data.items():
        if name == "retry":
            values["retry"] = _sub_table(value, RetryPolicy, "retry")
        elif name == "poll":
            values["poll"] = _sub_table(value, PollSchedule, "poll")
        elif name in _FILE_KEYS:
            values[_FILE_KEYS[name]] = value
        else:
            raise ConfigurationError(f"unknown setting {name!r} in {path}")
    return values


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    # A JSON string is a valid TOML basic string for everything json.dumps writes.
    return json.dumps(str(value), ensure_ascii=False)


def write_config_file(path: Path, settings: Mapping[str, Any]) -> None:
    """Write settings (file names: url, mid, …, and [poll]/[retry] tables) owner-only.

    The file holds the login password and the refund passCode, so it is created with mode 0600
    in a directory of mode 0700, and replaced atomically so a crash never leaves half a file.
    """
    lines: list[str] = []
    tables: list[str] = []
    for name, value in settings.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            tables.append(f"\n[{name}]")
            tables.extend(f"{k} = {_toml_value(v)}" for k, v in value.items())
        else:
            lines.append(f"{name} = {_toml_value(value)}")
    text = "\n".join(lines + tables) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(path.name + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except OSError as exc:
        raise ConfigurationError(f"cannot write the config file {path}: {exc}") from exc
