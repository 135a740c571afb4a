"""Metric values in memory, written to the multiprocess files by flush (service/metric_values.py).

Each case runs in a fresh interpreter: ``install`` changes prometheus_client for the whole process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, directory: Path) -> dict:
    """Run ``script`` with the multiprocess directory set; it prints one JSON object."""
    prelude = textwrap.dedent(
        """
        import json, math, time
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        from prometheus_client.multiprocess import MultiProcessCollector
        from service import metric_values

        def read():
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return {s.name + json.dumps(s.labels, sort_keys=True): s.value
                    for family in registry.collect() for s in family.samples}
        """
    )
    env = {"PROMETHEUS_MULTIPROC_DIR": str(directory), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_updates_reach_the_files_on_flush_and_in_the_background(tmp_path: Path) -> None:
    seen = _run(
        """
        metric_values.FLUSH_S = 3600.0  # the background writer stays out of the way
        metric_values.install()
        requests = Counter("requests", "r", ["outcome"])
        duration = Histogram("duration_seconds", "d", buckets=(0.1, 1.0))
        requests.labels("ok").inc(3)
        duration.observe(0.5)
        before = read()
        metric_values.flush()
        after = read()
        print(json.dumps({"before": before, "after": after}))
        """,
        tmp_path,
    )
    assert seen["before"].get('requests_total{"outcome": "ok"}', 0.0) == 0.0
    assert seen["after"]['requests_total{"outcome": "ok"}'] == 3.0
    assert seen["after"]['duration_seconds_bucket{"le": "1.0"}'] == 1.0
    assert seen["after"]['duration_seconds_bucket{"le": "0.1"}'] == 0.0
    assert seen["after"]["duration_seconds_sum{}"] == 0.5


def test_the_background_writer_writes_within_its_interval(tmp_path: Path) -> None:
    seen = _run(
        """
        metric_values.install()
        requests = Counter("requests", "r")
        requests.inc(7)
        time.sleep(metric_values.FLUSH_S * 3)
        print(json.dumps(read()))
        """,
        tmp_path,
    )
    assert seen["requests_total{}"] == 7.0


def test_gauges_keep_their_modes(tmp_path: Path) -> None:
    """ "mostrecent" compares the timestamps of each process's writes; a NaN (a dropped series)
    is written like any value."""
    seen = _run(
        """
        metric_values.install()
        weight = Gauge("weight", "w", ["variant"], multiprocess_mode="mostrecent")
        in_flight = Gauge("in_flight", "i", multiprocess_mode="livesum")
        weight.labels("a").set(10)
        weight.labels("b").set(math.nan)
        weight.labels("c").set(0)  # its value at creation: shown once set
        in_flight.inc(2)
        in_flight.dec()
        metric_values.flush()
        print(json.dumps(read(), default=str))
        """,
        tmp_path,
    )
    assert seen['weight{"variant": "a"}'] == 10.0
    assert seen['weight{"variant": "c"}'] == 0.0
    assert seen['weight{"variant": "b"}'] != seen['weight{"variant": "b"}']  # NaN
    assert seen["in_flight{}"] == 1.0


def test_processes_are_summed(tmp_path: Path) -> None:
    """Each process writes its own file, and the exposition sums them, as before."""
    script = """
        metric_values.install()
        requests = Counter("requests", "r")
        requests.inc(2)
        metric_values.flush()
        print(json.dumps(read()))
        """
    assert _run(script, tmp_path)["requests_total{}"] == 2.0
    assert _run(script, tmp_path)["requests_total{}"] == 4.0


def test_the_live_gauges_of_a_worker_that_died_are_let_go(tmp_path: Path) -> None:
    """A worker killed by a signal never marks itself dead, and its replacement starts beside its
    files: its requests in flight stayed in the sum, and its routing version in the minimum, so a
    replica whose worker had once died looked behind for good after the next routing change."""
    worker = """
        metric_values.install()
        version = Gauge("version", "v", multiprocess_mode="livemin")
        in_flight = Gauge("in_flight", "i", multiprocess_mode="livesum")
        version.set({version})
        in_flight.set({in_flight})
        metric_values.flush()
        print(json.dumps(read()))
        """
    died = _run(worker.format(version=3, in_flight=5), tmp_path)  # then gone, never marked dead
    assert died == {"version{}": 3.0, "in_flight{}": 5.0}
    replacement = _run(worker.format(version=4, in_flight=1), tmp_path)
    assert replacement == {"version{}": 4.0, "in_flight{}": 1.0}


def test_without_a_multiprocess_directory_nothing_changes() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from prometheus_client import values; from service import metric_values; "
            "metric_values.install(); print(values.ValueClass.__name__)",
        ],
        env={"PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.strip() == "MutexValue", done.stderr
