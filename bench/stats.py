"""Shared figures for the benchmarks: medians and percentiles, printed the same way everywhere."""

from __future__ import annotations

import numpy as np


def summary(name: str, values: list[float], unit: str = "ms", scale: float = 1000.0) -> str:
    if not values:
        return f"{name}: no samples"
    data = np.asarray(values) * scale
    p50, p90, p95 = np.percentile(data, [50, 90, 95])
    return (
        f"{name}: n={len(data)} p50={p50:.1f}{unit} p90={p90:.1f}{unit} p95={p95:.1f}{unit} "
        f"min={data.min():.1f}{unit} max={data.max():.1f}{unit}"
    )
