"""The event store on each backend: tests taking ``store`` (or ``event_location``) run once per backend."""

from __future__ import annotations

import pytest

from recsys.data.events import open_event_store


@pytest.fixture(params=["sqlite", "postgres"])
def event_location(request, tmp_path):
    """Where a fresh, empty store lives: a SQLite file, or a database on the session's PostgreSQL server."""
    if request.param == "sqlite":
        return tmp_path / "nested" / "dir" / "events.db"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def store(event_location):
    with open_event_store(event_location) as opened:
        yield opened
