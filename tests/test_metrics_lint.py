"""The gateway's /metrics passes ``promtool check metrics`` (naming, units, help, types)."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request

import pytest

from tests.helpers import METRICS_AUTH

pytestmark = pytest.mark.integration


def test_metrics_pass_promtool(gateway_url):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: `.ci/run` installs Debian's prometheus package")
    urllib.request.urlopen(  # make sure every request series exists
        urllib.request.Request(
            f"{gateway_url}/predict/diabetes", data=b'{"instances": [[0,0,0,0,0,0,0,0,0,0]]}'
        )
    ).read()
    scrape = urllib.request.Request(f"{gateway_url}/metrics", headers=METRICS_AUTH)
    text = urllib.request.urlopen(scrape).read()
    assert b"gateway_requests_total" in text
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
