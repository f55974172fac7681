"""Paired statistics of one architecture against a baseline on the same cases.

For every region and metric the per-case differences ``architecture − baseline`` are summarised by
their mean, a percentile bootstrap 95% confidence interval of that mean (``scipy.stats.bootstrap``
with a seeded NumPy ``Generator``, so the same seed gives the same interval) and the two-sided
Wilcoxon signed-rank p-value (``scipy.stats.wilcoxon``; exact for small samples without ties).

Small samples: with n ≤ 5 non-zero differences the smallest two-sided Wilcoxon p-value is
2 / 2ⁿ ≥ 0.0625, so no result can reach p < 0.05; such comparisons carry the warning
:data:`TOO_FEW_WARNING` instead of a verdict. No correction for multiple comparisons is applied
(several regions, metrics and architectures are tested): read p-values near 0.05 with care.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np

__all__ = ["HIGHER_IS_BETTER", "MIN_CASES_TO_CONCLUDE", "TOO_FEW_WARNING", "PairedComparison", "bootstrap_ci",
           "compare_paired", "compare_to_baseline", "wilcoxon_p"]

#: Fewest non-zero paired differences with which a two-sided Wilcoxon test can reach p < 0.05.
MIN_CASES_TO_CONCLUDE = 6
TOO_FEW_WARNING = "too few cases to conclude"
#: Direction of each metric: a positive difference is an improvement for Dice, a negative one for HD95.
HIGHER_IS_BETTER = {"dice": True, "hd95": False, "nsd": True, "lesion_dice": True, "lesion_hd95": False}


@dataclass(frozen=True)
class PairedComparison:
    """One architecture against the baseline for one region and metric.

    Attributes:
        architecture, baseline, region, metric: what is compared (metric: "dice", "hd95", …).
        n: cases where both values are finite (the pairs used).
        n_nonzero: pairs whose difference is not zero (the Wilcoxon sample; zeros are dropped).
        mean_difference: mean of ``architecture − baseline`` over the pairs (metric units: Dice as a
            fraction, HD95 in mm).
        ci_low, ci_high: percentile bootstrap 95% interval of that mean (NaN with fewer than 2 pairs).
        p_value: two-sided Wilcoxon signed-rank p (1.0 when every difference is zero, NaN without pairs).
        verdict: "better", "worse" (p < 0.05, by the metric's direction), "no significant difference",
            or :data:`TOO_FEW_WARNING`.
        warning: :data:`TOO_FEW_WARNING` with the count when n_nonzero < :data:`MIN_CASES_TO_CONCLUDE`,
            else "".
    """

    architecture: str
    baseline: str
    region: str
    metric: str
    n: int
    n_nonzero: int
    mean_difference: float
    ci_low: float
    ci_high: float
    p_value: float
    verdict: str
    warning: str

    def as_dict(self) -> dict:
        return asdict(self)


def wilcoxon_p(differences: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences (zeros dropped, as Wilcoxon's
    original test does). 1.0 when every difference is zero; NaN for an empty sample.

    Example: six positive differences give the exact p = 2 · (1/2)⁶ = 0.03125.
    """
    from scipy.stats import wilcoxon

    d = np.asarray(differences, dtype=float)
    if d.size == 0:
        return math.nan
    if not np.any(d != 0):
        return 1.0
    with warnings.catch_warnings():
        # scipy warns that the normal approximation is poor for tiny samples; the exact method is
        # used there anyway (method="auto"), and the small-sample warning of the report says the rest.
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)
        return float(wilcoxon(d, zero_method="wilcox", alternative="two-sided", method="auto").pvalue)


def bootstrap_ci(differences: Sequence[float], *, seed: int = 0, n_resamples: int = 10_000,
                 confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``differences`` (resampled with replacement,
    ``n_resamples`` times, from ``numpy.random.default_rng(seed)``: deterministic for a seed).
    (NaN, NaN) with fewer than two values."""
    from scipy.stats import bootstrap

    d = np.asarray(differences, dtype=float)
    if d.size < 2:
        return math.nan, math.nan
    if np.all(d == d[0]):  # every resample has the same mean; scipy would warn about degeneracy
        return float(d[0]), float(d[0])
    result = bootstrap((d,), np.mean, n_resamples=n_resamples, confidence_level=confidence, method="percentile",
                       vectorized=True, rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def compare_paired(values: Mapping[str, float], baseline_values: Mapping[str, float], *, architecture: str,
                   baseline: str, region: str, metric: str, seed: int = 0, n_resamples: int = 10_000,
                   alpha: float = 0.05) -> PairedComparison:
    """Compare per-case values of an architecture with the baseline's, paired by case id.

    Args:
        values, baseline_values: case id → metric value; only cases present in both with finite
            values on both sides are paired.
        architecture, baseline, region, metric: labels (``metric`` picks the direction of "better"
            from :data:`HIGHER_IS_BETTER`; unknown metrics count higher as better).
        seed, n_resamples: the bootstrap's.
        alpha: significance level of the verdict.
    """
    cases = sorted(set(values) & set(baseline_values))
    pairs = [(values[c], baseline_values[c]) for c in cases]
    d = np.array([a - b for a, b in pairs if math.isfinite(a) and math.isfinite(b)], dtype=float)
    n, n_nonzero = int(d.size), int(np.count_nonzero(d))
    mean = float(d.mean()) if n else math.nan
    low, high = bootstrap_ci(d, seed=seed, n_resamples=n_resamples)
    p = wilcoxon_p(d)
    warning = ""
    if n_nonzero < MIN_CASES_TO_CONCLUDE:
        warning = (f"{TOO_FEW_WARNING}: {n_nonzero} case{'s' if n_nonzero != 1 else ''} with a non-zero difference "
                   f"(a two-sided Wilcoxon test needs at least {MIN_CASES_TO_CONCLUDE} to reach p < 0.05)")
        verdict = TOO_FEW_WARNING
    elif p < alpha:
        improved = (mean > 0) == HIGHER_IS_BETTER.get(metric, True)
        verdict = "better" if improved else "worse"
    else:
        verdict = "no significant difference"
    return PairedComparison(architecture, baseline, region, metric, n, n_nonzero, mean, low, high, p, verdict,
                            warning)


def compare_to_baseline(per_case: Mapping[str, Mapping[tuple[str, str], Mapping[str, float]]], baseline: str, *,
                        metrics: Sequence[str] = ("dice", "hd95"), seed: int = 0,
                        n_resamples: int = 10_000) -> list[PairedComparison]:
    """Every architecture other than ``baseline`` against it, per region and metric.

    Args:
        per_case: architecture → (region, metric) → case id → value, e.g.
            ``{"umamba_bot": {("WT", "dice"): {"case_1": 0.91, …}, …}, "unet": {…}}``.
        baseline: a key of ``per_case``.
        metrics: which metrics to compare (those missing from an architecture are skipped).
        seed, n_resamples: the bootstrap's (the same seed for every comparison).
    Returns:
        one :class:`PairedComparison` per (architecture, region, metric), in the input's order.
    """
    if baseline not in per_case:
        raise KeyError(f"baseline {baseline!r} is not among {sorted(per_case)}")
    base = per_case[baseline]
    out = []
    for arch, table in per_case.items():
        if arch == baseline:
            continue
        for (region, metric), values in table.items():
            if metric not in metrics or (region, metric) not in base:
                continue
            out.append(compare_paired(values, base[(region, metric)], architecture=arch, baseline=baseline,
                                      region=region, metric=metric, seed=seed, n_resamples=n_resamples))
    return out
