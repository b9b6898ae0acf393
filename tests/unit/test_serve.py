"""`kessai serve` hands its workers settings that keep them alive on a busy machine.

One worker runs under `uvicorn.run`; several run under `kessai.cli.supervise`, which gives each its
own listening socket.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import typer
import uvicorn
from uvicorn.config import STARTUP_FAILURE

from kessai.cli import main, supervise
from kessai.config import SettingsError


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # _serve writes these into the environment: monkeypatch puts the old values back afterwards.
    for name in ("PROMETHEUS_MULTIPROC_DIR", "KESSAI_DATABASE_URL", "KESSAI_PUBLIC_URL"):
        monkeypatch.setenv(name, "unused")


def _refuse(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("not the server runner for this number of workers")


def test_several_workers_run_under_the_supervisor_with_time_to_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A spawned worker answers the supervisor's ping only after importing the command's modules,
    # which can take several seconds when the cores are busy; uvicorn's own default is 5 s.
    seen: list[uvicorn.Config] = []
    pinned: list[bool] = []

    def record(config: uvicorn.Config, *, pin: bool) -> int:
        seen.append(config)
        pinned.append(pin)
        return 0

    monkeypatch.setattr(supervise, "SUPPORTED", True)
    monkeypatch.setattr(supervise, "serve", record)
    monkeypatch.setattr(uvicorn, "run", _refuse)
    main._serve("127.0.0.1", 8000, "sqlite:///unused.db", 2, None)
    (config,) = seen
    assert config.workers == 2
    assert config.timeout_worker_healthcheck >= 30
    assert config.timeout_worker_healthcheck == main.WORKER_HEALTHCHECK_SECONDS
    assert (config.app, config.factory) == ("kessai.api.app:app_from_env", True)
    assert (config.host, config.port) == ("127.0.0.1", 8000)
    assert config.access_log is False
    assert config.server_header is False
    assert config.log_level == "info"
    assert config.backlog == 2048  # uvicorn's default, for each worker's socket
    # Workers are kept on CPUs unless KESSAI_PIN_WORKERS says otherwise.
    assert pinned == [True]
    monkeypatch.setenv("KESSAI_PIN_WORKERS", "false")
    main._serve("127.0.0.1", 8000, "sqlite:///unused.db", 2, None)
    assert pinned == [True, False]


def test_one_worker_runs_under_uvicorn_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def record(app: str, **kwargs: Any) -> None:
        seen.update(kwargs, app=app)

    monkeypatch.setattr(supervise, "serve", _refuse)
    monkeypatch.setattr(uvicorn, "run", record)
    main._serve("127.0.0.1", 8000, "sqlite:///unused.db", 1, None)
    assert seen["app"] == "kessai.api.app:app_from_env"
    assert seen["workers"] == 1
    assert seen["factory"] is True
    assert seen["access_log"] is False
    assert seen["server_header"] is False


def test_a_supervisor_that_gives_up_makes_serve_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    # A worker that cannot start (or a port in use) must not look like a clean exit.
    monkeypatch.setattr(supervise, "SUPPORTED", True)
    monkeypatch.setattr(supervise, "serve", lambda config, pin: STARTUP_FAILURE)
    with pytest.raises(typer.Exit) as raised:
        main._serve("127.0.0.1", 8000, "sqlite:///unused.db", 3, None)
    assert raised.value.exit_code == STARTUP_FAILURE


def test_an_operators_public_url_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    # Behind a TLS proxy the gateway listens on a local http address; the console's cookies are
    # Secure only if the https address the operator gave survives the start.
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: None)
    monkeypatch.setenv("KESSAI_PUBLIC_URL", "https://pay.example.jp")
    main._serve("127.0.0.1", 8000, "sqlite:///unused.db", 1, None)
    assert os.environ["KESSAI_PUBLIC_URL"] == "https://pay.example.jp"
    # --public-url wins over the environment; without either, the listening address is used.
    main._serve("127.0.0.1", 8000, "sqlite:///unused.db", 1, "https://other.example.jp")
    assert os.environ["KESSAI_PUBLIC_URL"] == "https://other.example.jp"
    monkeypatch.delenv("KESSAI_PUBLIC_URL")
    main._serve("127.0.0.1", 8001, "sqlite:///unused.db", 1, None)
    assert os.environ["KESSAI_PUBLIC_URL"] == "http://127.0.0.1:8001"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("KESSAI_CONSOLE_PAGE_SIZE", "abc", "KESSAI_CONSOLE_PAGE_SIZE must be a whole number"),
        ("KESSAI_CONSOLE_LOGIN_LOCK_SECONDS", "0", "KESSAI_CONSOLE_LOGIN_LOCK_SECONDS must be"),
        ("KESSAI_CONSOLE_COOKIE_SECURE", "ture", "KESSAI_CONSOLE_COOKIE_SECURE must be auto"),
        ("KESSAI_LOG_LEVEL", "VERBOSE", "KESSAI_LOG_LEVEL must be DEBUG, INFO"),
    ],
)
def test_console_settings_and_the_log_level_are_checked_before_any_worker_starts(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    # Each worker reads them when it builds its app; a bad one used to end every worker (and the
    # command) with a traceback instead of one line naming the variable.
    monkeypatch.setattr(supervise, "SUPPORTED", True)
    monkeypatch.setattr(supervise, "serve", _refuse)
    monkeypatch.setattr(uvicorn, "run", _refuse)
    monkeypatch.setenv(variable, value)
    for workers in (1, 2):
        with pytest.raises(SettingsError, match=message):
            main._serve("127.0.0.1", 8000, "sqlite:///unused.db", workers, None)
