"""The reports page in a real browser: headless chromium loads ``/reports`` from a real gateway in
front of a real monitor, finds each variant's newest drift and quality summaries, and opens the
linked drift report, whose Evidently plots render."""

from __future__ import annotations

import asyncio
import re

import aiohttp
import pandas as pd
import pytest

from service.launch import MONITOR_SERVICE, free_port, running_server
from tests.helpers import MONITOR_AUTH, browse, local_monitor, write_config

pytestmark = pytest.mark.integration


async def test_the_reports_page_opens_in_a_browser_and_its_links_render(demo_models, tmp_path):
    port = free_port()
    config = write_config(
        tmp_path / "gateway.yaml",
        data_dir=str(tmp_path / "data"),
        monitor=local_monitor(port, min_rows=100),
        access={"reports": "anonymous"},  # a browser sends no token: a trusted network's choice
        endpoints={"cancer": {"variants": [{"name": "stable", "model": "cancer:v1"}]}},
    )
    reference = pd.read_csv(demo_models["cancer:v1"].reference_path)
    rows = reference.sample(150, random_state=0)
    with (
        running_server(config, port=port, service=MONITOR_SERVICE) as monitor_url,
        running_server(config) as url,
    ):
        async with aiohttp.ClientSession() as session:
            labels = []
            for _, row in rows.iterrows():
                body = {"instances": [row.drop("label").tolist()]}
                async with session.post(f"{url}/predict/cancer", json=body) as answer:
                    assert answer.status == 200
                    request_id = (await answer.json())["request_id"]
                labels.append({"request_id": request_id, "label": row["label"]})
            async with session.post(f"{url}/feedback", json={"labels": labels}) as answer:
                assert answer.status == 200, await answer.text()
            for _ in range(100):  # until the records have reached the monitor
                async with session.post(
                    f"{monitor_url}/runs?reports=true", headers=MONITOR_AUTH
                ) as answer:
                    variants = (await answer.json())["variants"]
                if variants and variants[0]["quality"]["status"] == "ok":
                    break
                await asyncio.sleep(0.1)
            async with session.get(f"{url}/reports") as answer:  # a client: JSON as before
                assert answer.content_type == "application/json"
            async with session.get(f"{url}/reports?format=html") as answer:
                assert answer.content_type == "text/html"
                policy = answer.headers["content-security-policy"]
                assert policy == "default-src 'none'; style-src 'unsafe-inline'"  # no script
        page = await asyncio.to_thread(browse, f"{url}/reports")
        assert "Endpoint cancer" in page and "no rollout policy" in page
        assert re.search(r"0 of 30 features drifted; prediction drift: no", page), page[:3000]
        assert re.search(r"accuracy on labels [0-9.]+ vs [0-9.]+ on the reference", page)
        drift_link = re.search(r'href="(/reports/cancer/stable/drift-[0-9]+\.html)"', page)
        assert drift_link, page[:3000]
        report = await asyncio.to_thread(browse, f"{url}{drift_link[1]}")
    assert 'class="gateway-summary"' in report
    assert report.count("js-plotly-plot") >= 10, "Evidently's plots rendered"
