"""Shadow analysis: how often a shadow agrees with the variant it mirrors, and its own quality.

A shadow never answers anyone, so its predictions are only ever seen beside the primary's in the
same record. Agreement is row by row: the same predicted label for classifiers, the same value
within 1e-6 relative for regressors (in a rollout's shadow step, within the tolerance the rollout
judges the regressor's accuracy with: a retrained regressor is never the same). Once labels join,
the shadow's own quality is computed on the very rows the primary answered, which makes the two
directly comparable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from monitors.quality import QualityResult, quality


def agreeing(
    primary: np.ndarray, shadow: np.ndarray, regression: bool, within: float | None = None
) -> np.ndarray:
    """Row by row, whether the shadow said what the primary said; a regressor's values agree
    within ``within`` of each other, or else when they are the same (within 1e-6 relative)."""
    if regression:
        first, second = primary.astype(float), shadow.astype(float)
        if within is not None:
            return np.abs(first - second) <= within
        return np.isclose(first, second, rtol=1e-6, atol=0)
    return primary.astype(str) == shadow.astype(str)


@dataclass(frozen=True)
class ShadowResult:
    shadow: str
    rows: int
    agreement: float
    quality: QualityResult
    """The shadow's quality on the labeled rows among ``rows``."""


def compare_shadows(
    rows: pd.DataFrame,
    classes: Sequence | None,
    min_rows: int,
    score: Callable[[pd.DataFrame, Sequence | None, int], QualityResult] = quality,
) -> list[ShadowResult]:
    """Per shadow in ``rows`` (columns shadow, prediction, shadow_prediction, label): agreement
    with the primary and quality (by ``score``, e.g. a ``QualityMemo``). ``classes`` is None for
    a regressor."""
    results = []
    regression = classes is None
    for name, group in rows.groupby("shadow", sort=True):
        agree = agreeing(
            group["prediction"].to_numpy(), group["shadow_prediction"].to_numpy(), regression
        )
        labeled = group.loc[group["label"].notna(), ["shadow_prediction", "label"]]
        labeled = labeled.rename(columns={"shadow_prediction": "prediction"})
        result = score(labeled, classes, min_rows)
        results.append(ShadowResult(str(name), len(group), float(agree.mean()), result))
    return results
