"""Starting a server process (service/launch.py): one that exits while starting is started once
more, one that keeps failing fails with the reason, on real processes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from service.launch import START_ATTEMPTS, ServerExited, free_port, start_ready, stop

SERVER = """
import http.server, sys
from pathlib import Path
starts, port, fail_first = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
starts.write_text(starts.read_text() + "start\\n" if starts.exists() else "start\\n")
if starts.read_text().count("start") <= fail_first:
    sys.exit(1)  # as BentoML's arbiter does when a port it picked was taken meanwhile

class Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", port), Ready).serve_forever()
"""


def server(tmp_path: Path, failing_starts: int) -> tuple[str, list[str], Path]:
    """A base URL, a command serving ``/readyz`` there after ``failing_starts`` failed starts,
    and the file counting its starts."""
    port, starts = free_port(), tmp_path / "starts"
    command = [sys.executable, "-c", SERVER, str(starts), str(port), str(failing_starts)]
    return f"http://127.0.0.1:{port}", command, starts


def test_a_server_that_exits_while_starting_is_started_once_more(tmp_path):
    url, command, starts = server(tmp_path, failing_starts=1)
    process = start_ready(url, command, {}, None)
    try:
        assert process.poll() is None
        assert starts.read_text().count("start") == 2
    finally:
        stop(process)


def test_a_server_that_keeps_exiting_fails_saying_so_after_the_last_attempt(tmp_path):
    url, command, starts = server(tmp_path, failing_starts=START_ATTEMPTS)
    with pytest.raises(ServerExited, match="exited with code 1"):
        start_ready(url, command, {}, None)
    assert starts.read_text().count("start") == START_ATTEMPTS
