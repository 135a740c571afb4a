"""The patched BentoML TimeoutMiddleware: releases its timer per request, still answers 504."""

from __future__ import annotations

import asyncio
import gc
import json
import logging

from bentoml._internal.server.http.traffic import TimeoutMiddleware

from service import bentoml_fixes


async def fast_app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def slow_app(scope, receive, send):
    await asyncio.sleep(5)


async def call(middleware) -> list[dict]:
    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b""}

    await middleware({"type": "http"}, receive, send)
    return sent


def live_timer_futures() -> int:
    """Pending futures in this process. By their type, not ``isinstance``: that also reads
    ``__class__``, which some objects on the heap refuse (SHAP's stand-in for matplotlib raises)."""
    gc.collect()
    return sum(1 for o in gc.get_objects() if issubclass(type(o), asyncio.Future) and not o.done())


async def test_finished_requests_leave_no_timers_behind():
    bentoml_fixes.apply()
    middleware = TimeoutMiddleware(fast_app, timeout=60)
    before = live_timer_futures()
    for _ in range(200):
        sent = await call(middleware)
        assert sent[0]["status"] == 200
    assert live_timer_futures() - before < 10
    loop = asyncio.get_running_loop()
    scheduled = [h for h in getattr(loop, "_scheduled", []) if not h.cancelled()]
    assert len(scheduled) < 10


async def test_a_slow_request_still_gets_504():
    bentoml_fixes.apply()
    sent = await call(TimeoutMiddleware(slow_app, timeout=0.05))
    assert sent[0]["status"] == 504
    assert "0.05 seconds" in json.loads(sent[1]["body"])["error"]


def test_uvicorn_builds_no_access_log_lines_that_would_be_dropped():
    """uvicorn logs each answer when ``uvicorn.access`` has handlers (``hasHandlers``, asked per
    connection); at BentoML's WARNING level nothing would show, so it has none. At DEBUG (BentoML's
    debug mode) the lines show, as before."""
    access, root = logging.getLogger("uvicorn.access"), logging.getLogger()
    saved = access.propagate, access.handlers, root.level
    access.handlers = []  # pytest's own capture handlers, if an earlier test left them
    handler = logging.NullHandler()
    root.addHandler(handler)
    try:
        for level, logs in ((logging.WARNING, False), (logging.DEBUG, True)):
            root.setLevel(level)
            access.propagate = True
            bentoml_fixes.apply()
            assert access.hasHandlers() is logs
    finally:
        root.removeHandler(handler)
        access.propagate, access.handlers, _ = saved
        root.setLevel(saved[2])


def test_arbiter_directories_nothing_listens_in_are_removed_and_no_others(tmp_path, monkeypatch):
    """An arbiter killed with SIGKILL leaves its directory; the next one removes it, but never
    a live arbiter's, nor one so young its arbiter may not have bound its socket yet."""
    import os
    import socket
    import tempfile
    import time

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    sockets = []

    def directory(name: str, listening: bool | None, age_s: float = 3600.0) -> None:
        path = tmp_path / f"{bentoml_fixes.ARBITER_DIR_PREFIX}{name}"
        path.mkdir(mode=0o700)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sockets.append(server)
        if listening is not None:
            server.bind(str(path / "control"))
            server.listen()
            if not listening:
                server.close()  # its file stays, as a killed process leaves it
        made = time.time() - age_s
        os.utime(path, (made, made))

    directory("live", listening=True)
    directory("dead", listening=False)
    directory("empty", listening=None)
    directory("young", listening=False, age_s=1.0)
    bentoml_fixes.remove_dead_arbiters_directories()
    left = sorted(p.name.removeprefix(bentoml_fixes.ARBITER_DIR_PREFIX) for p in tmp_path.iterdir())
    for server in sockets:
        server.close()
    assert left == ["live", "young"]
