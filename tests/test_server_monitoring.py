"""Recording and labels end to end: a real gateway ships records to a real monitor process; labels
join whichever arrives first; the gateway serves on while the monitor is down; labels survive a
monitor restart."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import pytest

from monitors.records import PredictionRecord, encode_batch
from monitors.store import MonitorStore
from service import registry
from service.config import load_config
from service.launch import MONITOR_SERVICE, free_port, running_server
from service.monitor.priority import CAUGHT_UP_S
from service.names import RequestIds
from tests.helpers import (
    ADMIN_AUTH,
    ADMIN_ENV,
    AUTOGROUPS_ON,
    METRICS_AUTH,
    MONITOR_AUTH,
    MONITOR_TOKEN,
    local_monitor,
    metric_total,
    scrape,
    server_processes,
    write_config,
)

pytestmark = pytest.mark.integration
ROW = [1.0] * 30


@pytest.fixture(scope="module")
def monitored(demo_models, tmp_path_factory):
    """(gateway URL, monitor port, config path); the monitor is started by each test that needs it."""
    directory = tmp_path_factory.mktemp("monitoring")
    port = free_port()
    config = write_config(
        directory / "gateway.yaml",
        data_dir=str(directory / "data"),
        monitor=local_monitor(port, buffer_records=1000),
    )
    with running_server(config, log_path=directory / "gateway.log", env=ADMIN_ENV) as url:
        yield url, port, config


def monitor(config, port):
    return running_server(
        config,
        port=port,
        service=MONITOR_SERVICE,
        log_path=config.parent / f"monitor-{time.time():.0f}.log",
    )


async def predict(session, url, correlation_id="c-1"):
    """(status, label, variant, the gateway's request id) of one 1-row prediction."""
    async with session.post(
        f"{url}/predict/cancer",
        json={"instances": [ROW]},
        headers={"x-request-id": correlation_id},
    ) as answer:
        body = await answer.json()
        label = body.get("predictions", [{}])[0].get("label")
        return answer.status, label, body.get("variant"), body.get("request_id")


async def feedback(session, url, labels):
    async with session.post(f"{url}/feedback", json={"labels": labels}) as answer:
        return answer.status, answer.headers.get("Retry-After"), await answer.json()


async def summary(session, monitor_url):
    async with session.get(f"{monitor_url}/summary", headers=MONITOR_AUTH) as answer:
        return await answer.json()


async def stored_records(session, monitor_url) -> int:
    return sum(v["records"] for v in (await summary(session, monitor_url))["variants"])


async def wait_for_records(session, monitor_url, count, timeout_s=5.0):
    """Wait until the monitor holds at least ``count`` records in all."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stats = await summary(session, monitor_url)
        if sum(v["records"] for v in stats["variants"]) >= count:
            return stats
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {count} records reached the monitor: {stats}")


async def test_labels_join_before_and_after_and_are_idempotent(monitored):
    url, port, config = monitored
    with monitor(config, port) as monitor_url:
        async with aiohttp.ClientSession() as session:
            before = await stored_records(session, monitor_url)
            answers = [await predict(session, url, "same-correlation-id") for _ in range(3)]
            ids = [a[3] for a in answers]
            assert len(set(ids)) == 3, "a reused x-request-id never merges records"
            status, _, body = await feedback(
                session, url, [{"request_id": ids[0], "label": "benign"}]
            )
            assert status == 200 and body["results"][0]["outcome"] == "stored"
            await wait_for_records(session, monitor_url, before + 3)
            labels = [
                {"request_id": ids[1], "label": answers[1][1]},
                {"request_id": ids[2], "label": "malignant"},
            ]
            assert (await feedback(session, url, labels))[0] == 200
            status, _, body = await feedback(session, url, labels[:1])
            assert status == 200 and body["results"][0]["outcome"] == "duplicate"
            other = "benign" if answers[1][1] == "malignant" else "malignant"
            status, _, body = await feedback(session, url, [{"request_id": ids[1], "label": other}])
            assert status == 409 and ids[1] in body["error"]
            status, _, body = await feedback(
                session, url, [{"request_id": ids[1], "label": [answers[1][1]] * 2}]
            )
            assert status == 400 and "1 row(s)" in body["error"]  # the record is there: rows known
    store = MonitorStore.open_sqlite(load_config(config).data_dir / "monitor.sqlite3")
    joined = {}
    for variant in ("stable", "candidate"):
        frame = store.labeled("cancer", variant)
        joined.update(zip(frame.request_id, zip(frame.prediction, frame.label)))
    assert set(ids) <= set(joined)
    assert joined[ids[1]] == (answers[1][1], answers[1][1])
    assert joined[ids[0]] == (answers[0][1], "benign")
    correlations = store.db.query(
        "SELECT DISTINCT correlation_id FROM predictions WHERE request_id IN (?,?,?)", ids
    )
    assert correlations == [("same-correlation-id",)]


UNKNOWN_ID = "cancer:" + "0" * 32


BAD_FEEDBACK = [
    (b"{", "malformed JSON"),
    (b"[" * 5000 + b"]" * 5000, "nested too deeply"),
    (b'{"labels": []}', "1 to 10000"),
    (b'{"labels": [{"request_id": "a b", "label": 1}]}', "request_id of a gateway answer"),
    (b'{"labels": [{"request_id": "r1", "label": 1}]}', "request_id of a gateway answer"),
    (b'{"labels": [{"request_id": "r1"}]}', "must be"),
    (b'{"labels": [{"request_id": "%s", "label": {"x": 1}}]}' % UNKNOWN_ID.encode(), "a value"),
    (b'{"labels": [{"request_id": "%s", "label": []}]}' % UNKNOWN_ID.encode(), "a value"),
    (
        b'{"labels": [{"request_id": "%s", "label": "banana"}]}' % UNKNOWN_ID.encode(),
        "not a class",
    ),
    (b'{"labels": [{"request_id": "%s", "label": 1}]}' % UNKNOWN_ID.encode(), "not a class"),
    (
        b'{"labels": [{"request_id": "diabetes:%s", "label": "high"}]}' % (b"0" * 32),
        "regressor",
    ),
    (  # an integer past any float (JSON has no bound): it was a 500
        b'{"labels": [{"request_id": "diabetes:%s", "label": 1%s}]}' % (b"0" * 32, b"0" * 400),
        "regressor",
    ),
    (  # finite, and its square or range over the window overflowed the analysis
        b'{"labels": [{"request_id": "diabetes:%s", "label": -1e308}]}' % (b"0" * 32),
        "at most 1e+15",
    ),
    (
        b'{"labels": [{"request_id": "missing:%s", "label": 1}]}' % (b"0" * 32),
        "no endpoint 'missing'",
    ),
    (b'{"labels": [{"request_id": "r1", "label": 1, "extra": 2}]}', "must be"),
]


async def test_a_variant_added_just_after_the_monitor_read_the_routing_state_keeps_its_records(
    monitored, demo_models
):
    """The monitor had just read the routing state (for a record of a variant it had not seen
    for a second) when an admin added a variant that answered at once: its first batch was
    refused as unknown, and lost, though every caller had its 200."""
    url, port, config = monitored
    v1 = demo_models["cancer:v1"]
    tag = registry.add_model(v1.onnx_path, "cancer", v1.reference_path, version="v4-fresh").tag
    with monitor(config, port) as monitor_url:
        async with aiohttp.ClientSession() as session:
            before = await stored_records(session, monitor_url)
            await asyncio.sleep(1.1)  # stable not seen for a second: its record makes a read
            assert (await predict(session, url))[0] == 200
            await wait_for_records(session, monitor_url, before + 1)
            variant = {"name": "fresh", "model": tag, "role": "candidate", "weight": 0}
            async with session.post(
                f"{url}/admin/endpoints/cancer/variants", json=variant, headers=ADMIN_AUTH
            ) as added:
                assert added.status == 201, await added.text()
            pinned = {**ADMIN_AUTH, "x-gateway-variant": "fresh"}
            for _ in range(5):
                async with session.post(
                    f"{url}/predict/cancer", json={"instances": [ROW]}, headers=pinned
                ) as answer:
                    assert answer.status == 200 and (await answer.json())["variant"] == "fresh"
            stats = await wait_for_records(session, monitor_url, before + 6)
            fresh = [v for v in stats["variants"] if v["variant"] == "fresh"]
            assert fresh and fresh[0]["records"] == 5
            async with session.delete(
                f"{url}/admin/endpoints/cancer/variants/fresh", headers=ADMIN_AUTH
            ) as removed:
                assert removed.status == 200


async def test_bad_feedback_is_refused_clearly_and_nothing_is_stored(monitored):
    url, port, config = monitored
    good = {"request_id": "cancer:" + "1" * 32, "label": "benign"}
    with monitor(config, port) as monitor_url:
        async with aiohttp.ClientSession() as session:
            pending = (await summary(session, monitor_url))["pending_labels"]
            for body, words in BAD_FEEDBACK:
                async with session.post(f"{url}/feedback", data=body) as answer:
                    assert answer.status == 400, body[:80]
                    assert words in (await answer.json())["error"], body[:80]
                if body.startswith(b'{"labels"'):  # one bad label refuses its good companions
                    mixed = body.replace(
                        b'{"labels": [', b'{"labels": [' + json.dumps(good).encode() + b", "
                    )
                    async with session.post(f"{url}/feedback", data=mixed) as answer:
                        assert answer.status == 400, mixed[:80]
            assert (await summary(session, monitor_url))["pending_labels"] == pending
            assert (await predict(session, url))[0] == 200  # still serving


async def test_gateway_serves_with_the_monitor_down_and_labels_survive_a_restart(monitored):
    url, port, config = monitored
    with monitor(config, port) as monitor_url:
        async with aiohttp.ClientSession() as session:
            before = await stored_records(session, monitor_url)
            kept = (await predict(session, url))[3]
            status, _, _ = await feedback(session, url, [{"request_id": kept, "label": "benign"}])
            assert status == 200
    # The monitor is stopped now.
    async with aiohttp.ClientSession() as session:
        results = await asyncio.gather(*(predict(session, url) for i in range(50)))
        assert all(r[0] == 200 for r in results)
        status, retry_after, body = await feedback(
            session, url, [{"request_id": results[0][3], "label": "benign"}]
        )
        assert status == 503 and retry_after == "5" and "unreachable" in body["error"]
        assert str(port) not in body["error"]  # where the monitor is: for the log alone
    with monitor(config, port) as monitor_url:
        async with aiohttp.ClientSession() as session:
            await wait_for_records(session, monitor_url, before + 51)  # buffered ones delivered
            status, _, body = await feedback(
                session, url, [{"request_id": kept, "label": "benign"}]
            )
            assert status == 200 and body["results"][0]["outcome"] == "duplicate"  # still stored


async def test_a_full_buffer_drops_and_counts_records_never_blocks(demo_models, tmp_path):
    config = write_config(
        tmp_path / "gateway.yaml",
        data_dir=str(tmp_path / "data"),
        monitor={
            "url": f"http://127.0.0.1:{free_port()}",  # nothing listens there
            "buffer_records": 10,
            "flush_interval_ms": 100,
        },
    )
    with running_server(config) as url:
        async with aiohttp.ClientSession() as session:
            results = [await predict(session, url) for i in range(30)]
            assert all(r[0] == 200 for r in results)
            await asyncio.sleep(0.5)  # a shipping round fails, puts the batch back, exports size
            async with session.get(f"{url}/metrics", headers=METRICS_AUTH) as answer:
                text = await answer.text()
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line.startswith("gateway_monitor_")
    }
    assert values["gateway_monitor_dropped_records_total"] == 20
    assert values["gateway_monitor_buffered_records"] == 10


async def test_injected_drift_and_labels_show_up_in_runs_and_metrics(demo_models, tmp_path):
    import pandas as pd

    port = free_port()
    config = write_config(
        tmp_path / "gateway.yaml",
        data_dir=str(tmp_path / "data"),
        monitor=local_monitor(port),
    )
    reference = pd.read_csv(demo_models["cancer:v1"].reference_path)
    rows = reference.sample(600, replace=True, random_state=3)
    truth = rows.pop("label").tolist()
    rows["mean_radius"] *= 3  # an outside client sends inputs that drifted in two features
    rows["worst_texture"] *= 3
    batches = [rows.iloc[i : i + 20] for i in range(0, len(rows), 20)]
    with monitor(config, port) as monitor_url, running_server(config) as url:
        async with aiohttp.ClientSession() as session:
            predicted, labels = [], []
            for i, batch in enumerate(batches):
                async with session.post(
                    f"{url}/predict/cancer",
                    json={"instances": batch.to_numpy().tolist()},
                    headers={"x-gateway-variant": "stable"},
                ) as answer:
                    assert answer.status == 200
                    body = await answer.json()
                    predicted += [p["label"] for p in body["predictions"]]
                labels.append(
                    {"request_id": body["request_id"], "label": truth[i * 20 : (i + 1) * 20]}
                )
            status, _, _ = await feedback(session, url, labels)
            assert status == 200
            await wait_for_records(session, monitor_url, len(batches))
            async with session.post(f"{monitor_url}/runs", headers=MONITOR_AUTH) as answer:
                reports = {r["variant"]: r for r in (await answer.json())["variants"]}
            async with session.get(f"{monitor_url}/metrics", headers=METRICS_AUTH) as answer:
                metrics = await answer.text()
    stable = reports["stable"]
    assert stable["drift"]["status"] == "ok" and stable["drift"]["rows"] == 600, reports
    assert stable["drift"]["drifted_features"] == ["mean_radius", "worst_texture"]
    accuracy = sum(p == t for p, t in zip(predicted, truth)) / len(truth)
    assert stable["quality"]["status"] == "ok"
    assert stable["quality"]["accuracy"] == pytest.approx(accuracy)
    series = 'gateway_model_quality{endpoint="cancer",metric="accuracy",variant="stable"}'
    exported = [
        float(line.split(" ")[1]) for line in metrics.splitlines() if line.startswith(series)
    ]
    assert exported == [pytest.approx(accuracy)]
    drift_series = (
        'gateway_feature_drift_score{endpoint="cancer",feature="mean_radius",variant="stable"}'
    )
    assert drift_series in metrics and "gateway_monitor_last_run_timestamp_seconds" in metrics
    import shutil
    import subprocess

    lint = subprocess.run(
        [shutil.which("promtool") or "promtool", "check", "metrics"],
        input=metrics.encode(),
        capture_output=True,
    )
    assert lint.returncode == 0, lint.stdout.decode() + lint.stderr.decode()


async def test_reports_are_saved_listed_and_served_through_the_gateway(monitored, demo_models):
    import pandas as pd

    url, port, config = monitored
    rows = pd.read_csv(demo_models["cancer:v1"].reference_path).drop(columns=["label"])
    with monitor(config, port) as monitor_url:
        async with aiohttp.ClientSession() as session:
            before = await stored_records(session, monitor_url)
            for i in range(15):
                body = {"instances": rows.sample(20, random_state=i).to_numpy().tolist()}
                headers = {"x-gateway-variant": "stable"}
                async with session.post(
                    f"{url}/predict/cancer", json=body, headers=headers
                ) as answer:
                    assert answer.status == 200
            await wait_for_records(session, monitor_url, before + 15)
            runs = f"{monitor_url}/runs"
            async with session.post(f"{runs}?reports=true", headers=MONITOR_AUTH) as answer:
                assert answer.status == 200
            async with session.post(f"{runs}?reports=maybe", headers=MONITOR_AUTH) as answer:
                assert answer.status == 400
            async with session.get(f"{url}/reports") as answer:
                assert answer.status == 401  # reports show what callers sent: admin token
            async with session.get(f"{url}/reports", headers=ADMIN_AUTH) as answer:
                listing = (await answer.json())["reports"]
            drift = [
                r
                for r in listing
                if (r["endpoint"], r["variant"], r["kind"]) == ("cancer", "stable", "drift")
            ]
            assert {r["format"] for r in drift} == {"html", "json"}
            html = next(r for r in drift if r["format"] == "html")
            report = f"{url}/reports/{html['path']}"
            async with session.get(report, headers=ADMIN_AUTH) as answer:
                assert answer.status == 200 and answer.content_type == "text/html"
                assert len(await answer.read()) > 100_000
            async with session.get(report) as answer:
                assert answer.status == 401
            for bad in (
                "cancer/stable/nope.html",
                "cancer/stable/..%2F..%2Fgateway.yaml",
                "x/y/z",
                "../stable/" + html["path"].rsplit("/", 1)[1],
                "%2e%2e/%2e%2e/summary",
            ):
                async with session.get(f"{url}/reports/{bad}", headers=ADMIN_AUTH) as answer:
                    assert answer.status == 404, bad
    async with aiohttp.ClientSession() as session:  # the monitor is down now
        async with session.get(f"{url}/reports", headers=ADMIN_AUTH) as answer:
            assert answer.status == 503


async def test_the_monitor_refuses_bad_bodies_clearly(monitored):
    _, port, config = monitored
    cases = [
        ("/records", b"{", "malformed JSON"),
        ("/records", b'{"records": {}}', "$.records"),
        ("/records", b'{"records": [{"request_id": "x"}]}', "missing required field"),
        ("/records", b'{"records": [{"request_id": 7}]}', "$.records[0].request_id"),
        ("/labels", b'{"labels": [{"label": 1}]}', "request_id"),
        ("/labels", b"[]", '"labels"'),
        ("/labels", b'{"labels": [{"request_id": "x", "label": 1}]}', "not a request id"),
        ("/labels", b"[" * 5000 + b"]" * 5000, "nested too deeply"),
        ("/records", b'{"a":' * 3000 + b"1" + b"}" * 3000, "nested too deeply"),
    ]
    with monitor(config, port) as monitor_url:
        async with aiohttp.ClientSession() as session:
            for path, body, words in cases:
                async with session.post(
                    f"{monitor_url}{path}", data=body, headers=MONITOR_AUTH
                ) as answer:
                    assert answer.status == 400, (path, body)
                    assert words in (await answer.json())["error"]
            stats = await summary(session, monitor_url)  # still serving
            assert "variants" in stats


async def test_shadow_predictions_are_recorded_and_judged_beside_the_primary(demo_models, tmp_path):
    """A shadow's answers reach the monitor in the primary's record: its agreement with the
    primary and its own accuracy on labels match what both models say on the same rows."""
    import pandas as pd

    port = free_port()
    config = write_config(
        tmp_path / "gateway.yaml",
        data_dir=str(tmp_path / "data"),
        monitor=local_monitor(port, min_rows=100),
        endpoints={
            "cancer": {
                "routing": {"allow_pinning": True},
                "variants": [
                    {"name": "stable", "model": "cancer:v1"},
                    {"name": "mirror", "model": "cancer:v2", "role": "shadow", "mirror": 1.0},
                ],
            }
        },
    )
    reference = pd.read_csv(demo_models["cancer:v1"].reference_path)
    rows = reference.sample(200, random_state=4)
    truth = rows.pop("label").tolist()
    with monitor(config, port) as monitor_url, running_server(config, env=ADMIN_ENV) as url:
        async with aiohttp.ClientSession() as session:
            said = {"stable": [], "mirror": []}
            for variant in said:  # what each model says on these rows, asked directly
                async with session.post(
                    f"{url}/predict/cancer",
                    json={"instances": rows.to_numpy().tolist()},
                    headers={"x-gateway-variant": variant, **ADMIN_AUTH},  # a shadow: admin only
                ) as answer:
                    said[variant] = [p["label"] for p in (await answer.json())["predictions"]]
            ids = []
            for row in rows.to_numpy().tolist():
                async with session.post(
                    f"{url}/predict/cancer", json={"instances": [row]}
                ) as answer:
                    assert answer.status == 200 and answer.headers["x-gateway-variant"] == "stable"
                    ids.append(answer.headers["x-gateway-request-id"])
            labels = [{"request_id": i, "label": y} for i, y in zip(ids, truth)]
            assert (await feedback(session, url, labels))[0] == 200
            await wait_for_records(session, monitor_url, len(rows) + 2)
            async with session.post(f"{monitor_url}/runs", headers=MONITOR_AUTH) as answer:
                reports = {r["variant"]: r for r in (await answer.json())["variants"]}
            async with session.get(f"{monitor_url}/metrics", headers=METRICS_AUTH) as answer:
                metrics = await answer.text()
    shadow = reports["stable"]["shadows"]["mirror"]
    agreement = sum(a == b for a, b in zip(said["stable"], said["mirror"])) / len(rows)
    accuracy = sum(p == y for p, y in zip(said["mirror"], truth)) / len(rows)
    # the pinned request to stable was mirrored too: the same rows twice, agreement unchanged
    assert shadow["rows"] == 2 * len(rows) and shadow["agreement"] == pytest.approx(agreement)
    assert shadow["quality"]["status"] == "ok" and shadow["quality"]["rows"] == len(rows)
    assert shadow["quality"]["accuracy"] == pytest.approx(accuracy)
    assert any(
        line.startswith('gateway_shadow_agreement_ratio{endpoint="cancer",variant="mirror"}')
        and float(line.split()[-1]) == pytest.approx(agreement)
        for line in metrics.splitlines()
    )


def session_niceness(pid: int) -> int:
    """The niceness of the session (autogroup) a process belongs to."""
    return int(Path(f"/proc/{pid}/autogroup").read_text().split()[-1])


async def post_record(session, monitor_url, at: float) -> None:
    record = PredictionRecord(
        request_id=RequestIds(MONITOR_TOKEN).new("cancer"),
        at=at,
        endpoint="cancer",
        variant="stable",
        model="cancer:v1",
        predictions=[1],
        latency_s=0.001,
    )
    async with session.post(
        f"{monitor_url}/records", data=encode_batch([record]), headers=MONITOR_AUTH
    ) as answer:
        assert answer.status == 200, await answer.text()


async def test_the_monitor_yields_the_cpu_while_records_come_on_time_and_not_while_they_wait(
    demo_models, tmp_path
):
    """service/monitor/priority.py: at ``monitor.niceness`` while it keeps up, 0 while records
    wait, back once they have come on time for ``CAUGHT_UP_S``; the gauge says which. Where
    sessions do not share the CPU (no autogroups), the monitor leaves its priority alone."""
    port = free_port()
    config = write_config(
        tmp_path / "gateway.yaml", data_dir=str(tmp_path / "data"), monitor=local_monitor(port)
    )
    niceness = load_config(config).monitor.niceness
    with monitor(config, port) as monitor_url:
        (worker,) = server_processes(port)[1]
        async with aiohttp.ClientSession() as session:

            async def exported() -> float:
                return metric_total(await scrape(session, monitor_url), "gateway_monitor_niceness ")

            if not AUTOGROUPS_ON:  # nothing is changed, and the gauge says so
                assert await exported() == 0
                return
            assert session_niceness(worker.pid) == niceness > 0
            assert await exported() == niceness
            await post_record(session, monitor_url, at=time.time() - 5)  # a gateway's backlog
            assert session_niceness(worker.pid) == 0
            assert await exported() == 0
            caught_up = time.monotonic() + CAUGHT_UP_S + 0.5
            while time.monotonic() < caught_up:
                await post_record(session, monitor_url, at=time.time())
                await asyncio.sleep(0.25)
            assert session_niceness(worker.pid) == niceness
            assert await exported() == niceness
