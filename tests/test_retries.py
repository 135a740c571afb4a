"""Start-up work against a store that cannot be reached yet is retried with backoff, logged once,
until it succeeds or its deadline passes; a config error is not retried."""

from __future__ import annotations

import logging
import sqlite3
import time

import pytest

from service import retries
from service.errors import ConfigError
from service.retries import with_retries


@pytest.mark.alone
def test_start_up_work_is_retried_until_it_succeeds_or_its_deadline(monkeypatch, caplog):
    monkeypatch.setattr(retries, "MAX_BACKOFF_S", 0.01)
    attempts = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 4:
            raise sqlite3.OperationalError("database is locked")
        return "state"

    with caplog.at_level(logging.INFO, logger="gateway.storage"):
        assert with_retries("reading the routing state", flaky) == "state"
    assert len(attempts) == 4
    assert sum("reading the routing state failed" in r.getMessage() for r in caplog.records) == 1

    def broken() -> str:
        raise sqlite3.OperationalError("disk I/O error")

    started = time.monotonic()
    try:
        with_retries("reading the routing state", broken, deadline_s=0.2)
    except sqlite3.OperationalError:
        pass
    else:
        raise AssertionError("the last failure is raised after the deadline")
    assert time.monotonic() - started < 1


def test_a_config_error_is_raised_at_once():
    attempts = []

    def misconfigured() -> str:
        attempts.append(1)
        raise ConfigError("state.backend is postgres, but $GATEWAY_DATABASE_URL is not set")

    with pytest.raises(ConfigError):
        with_retries("opening the routing state", misconfigured)
    assert attempts == [1]
