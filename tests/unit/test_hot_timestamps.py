"""Hot statements write and read timestamps exactly as SQLAlchemy's SQLite dialect does."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from kessai.adapters import hot
from kessai.adapters.schema import UTCDateTime

_DIALECT = sa.create_engine("sqlite://").dialect
_TYPE = UTCDateTime().dialect_impl(_DIALECT)


def _sqlalchemy_text(value: datetime) -> str:
    bind = _TYPE.bind_processor(_DIALECT)
    assert bind is not None
    text = bind(value)
    assert isinstance(text, str)
    return text


def test_timestamps_are_written_and_read_as_sqlalchemy_does() -> None:
    rng = random.Random(20261128)
    read = _TYPE.result_processor(_DIALECT, None)
    assert read is not None
    tokyo = timezone(timedelta(hours=9))
    for i in range(5_000):
        value = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=rng.randrange(10**17))
        if i % 3 == 0:
            value = value.replace(microsecond=0)  # isoformat would drop the fraction
        if i % 5 == 0:
            value = value.astimezone(tokyo)
        text = hot._utc_text(value)
        assert text == _sqlalchemy_text(value)
        assert hot._utc_datetime(text) == read(text).replace(tzinfo=UTC) == value


def test_the_same_instant_twice_and_a_new_one_after_it() -> None:
    first = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
    second = first + timedelta(microseconds=1)
    assert hot._utc_text(first) == hot._utc_text(first) == "2026-11-28 09:00:00.000000"
    assert hot._utc_text(second) == "2026-11-28 09:00:00.000001"
    assert hot._utc_text(None) is None


def test_a_naive_timestamp_is_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        hot._utc_text(datetime(2026, 11, 28, 9, 0))
