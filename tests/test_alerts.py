"""Alert rules and scrape config: promtool checks them and runs their unit tests, and the unit tests
catch a broken rule (a copy with a wrong threshold fails them)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

PROMETHEUS = Path(__file__).resolve().parents[1] / "grafana" / "prometheus"


def promtool(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess:
    return subprocess.run(
        [shutil.which("promtool") or "promtool", *args], cwd=cwd, capture_output=True, text=True
    )


def test_scrape_config_and_rules_are_valid(tmp_path):
    for name in ("prometheus.yml", "alerts.yml"):
        shutil.copy(PROMETHEUS / name, tmp_path)
    (tmp_path / "gateway-metrics.token").write_text("a-scrape-token")  # as an operator puts it
    checked = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    rules = promtool("check", "rules", "alerts.yml")
    assert rules.returncode == 0 and "SUCCESS: 17 rules found" in rules.stdout, rules.stdout


def test_alert_rules_pass_their_unit_tests():
    tested = promtool("test", "rules", "alerts_test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_unit_tests_catch_a_wrong_threshold(tmp_path):
    broken = (PROMETHEUS / "alerts.yml").read_text().replace(") > 0.05", ") > 0.5")
    assert broken != (PROMETHEUS / "alerts.yml").read_text()
    (tmp_path / "alerts.yml").write_text(broken)
    shutil.copy(PROMETHEUS / "alerts_test.yml", tmp_path)
    tested = promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert tested.returncode != 0 and "GatewayHighErrorRatio" in tested.stdout + tested.stderr
