"""Paging alerts on healthy and broken variants: how often GatewayHighErrorRatio and
GatewayLatencyOverSLO page, simulated over 30 days at traffic from one request every 20 s to 500 a
second.

The rules (grafana/prometheus/alerts.yml) judge a ratio of 5-minute counts every minute and page
once it has held for ``for``. This draws Poisson requests minute by minute, each bad (failed, or
slower than the SLO) with a fixed probability, and applies each rule's arithmetic: the ratio
alone over its limit (the rules before), and over it by two standard errors with at least 10 bad
requests in the 5 minutes (the rules now). promtool's unit tests (grafana/prometheus/
alerts_test.yml) check the rules themselves on fixed series; this checks their statistics.

Run: ``.venv/bin/python bench/alerts.py``; prints the tables BENCHMARKS.md shows.
"""

from __future__ import annotations

import numpy as np

DAYS = 30
WINDOW_MIN = 5
RULES = {"ratio alone": (0.0, 0), "2 standard errors, 10 bad": (2.0, 10)}
"""Name -> (standard errors over the limit, bad requests needed in the window)."""
ALERTS = {
    # name: (limit, evaluations the condition must hold: ``for`` + 1, healthy and bad shares)
    "GatewayHighErrorRatio": (0.05, 6, (0.01, 0.02, 0.04), (0.1, 1.0)),
    "GatewayLatencyOverSLO": (0.01, 11, (0.005, 0.008, 0.01), (0.03, 0.1)),
}
RATES = (0.05, 0.2, 1, 5, 50, 500)


def firings(
    rng: np.random.Generator,
    per_s: float,
    bad_share: float,
    limit: float,
    holds: int,
    rule: tuple[float, int],
    minutes: int,
) -> list[int]:
    """The minutes at which the alert fires (each time its condition has held ``holds``
    evaluations in a row)."""
    requests = rng.poisson(per_s * 60, minutes)
    bad = rng.binomial(requests, bad_share)
    n = np.convolve(requests, np.ones(WINDOW_MIN))[:minutes]
    k = np.convolve(bad, np.ones(WINDOW_MIN))[:minutes]
    share = np.divide(k, n, out=np.zeros(minutes), where=n > 0)
    spread = np.sqrt(np.divide(share * (1 - share), n, out=np.zeros(minutes), where=n > 0))
    errors, needed = rule
    condition = (n > 0) & (share > limit + errors * spread) & (k >= needed)
    fired, run = [], 0
    for minute, holding in enumerate(condition):
        run = run + 1 if holding else 0
        if run == holds:
            fired.append(minute)
    return fired


def main() -> None:
    rng = np.random.default_rng(0)
    for alert, (limit, holds, healthy, broken) in ALERTS.items():
        print(f"\n{alert} (limit {limit:g}): pages a day when healthy, minutes to page when not")
        shares = " | ".join(f"{s:.1%} bad" for s in healthy)
        late = " | ".join(f"{s:.0%} bad" for s in broken)
        print(f"| rule | requests/s | {shares} | {late} |")
        print("|---|---:|" + "---:|" * (len(healthy) + len(broken)))
        for name, rule in RULES.items():
            for per_s in RATES:
                pages = [
                    len(firings(rng, per_s, s, limit, holds, rule, DAYS * 24 * 60)) / DAYS
                    for s in healthy
                ]
                first = [firings(rng, per_s, s, limit, holds, rule, 600) for s in broken]
                to_page = [str(f[0] + 1) if f else "none in 10 h" for f in first]
                cells = [f"{p:.2f}" for p in pages] + to_page
                print(f"| {name} | {per_s:g} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
