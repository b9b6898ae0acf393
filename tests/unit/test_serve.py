"""`kessai serve` hands uvicorn settings that keep its workers alive on a busy machine."""

from __future__ import annotations

from typing import Any

import pytest
import uvicorn

from kessai.cli import main


def test_workers_have_time_to_start_before_the_supervisor_gives_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A spawned worker answers the supervisor's ping only after importing the command's modules,
    # which can take several seconds when the cores are busy; uvicorn's own default is 5 s.
    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: seen.update(kwargs))
    # _serve writes these into the environment: monkeypatch puts the old values back afterwards.
    for name in ("PROMETHEUS_MULTIPROC_DIR", "KESSAI_DATABASE_URL", "KESSAI_PUBLIC_URL"):
        monkeypatch.setenv(name, "unused")
    main._serve("127.0.0.1", 8000, "sqlite:///unused.db", 2, None)
    assert seen["workers"] == 2
    assert seen["timeout_worker_healthcheck"] >= 30
