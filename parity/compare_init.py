"""Initialisation: our LeNet's initial weights against the book's PyTorch init.

Under the book's init every weight is Xavier-uniform, U(-a, a) with
a = sqrt(6 / (fan_in + fan_out)), and every bias is PyTorch's default,
U(-b, b) with b = 1 / sqrt(fan_in); for a convolution the fans count the 5x5 window
(fan_in = in_channels * 25). We draw many networks on each side and, per parameter
tensor, pool all drawn values and compare:

* range: every value inside the bound, and the extremes near it (the gap from the
  largest |value| to the bound is about bound / n for n values; we allow 20x that);
* mean against 0 and std against bound / sqrt(3), both within 5 standard errors;
* the two sides' means and stds against each other, within 5 standard errors;
* the two samples' distributions with a two-sample Kolmogorov-Smirnov statistic,
  against its critical value at significance 0.001.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from flax import nnx

from lenet_jax.model import LeNet
from parity.convert import params_from_torch
from parity.reference import seeded_book_lenet
from parity.rows import Row, within

# fan_in and fan_out of each layer, counting a convolution's 5x5 window.
FANS = {
    "conv1": (1 * 25, 6 * 25),
    "conv2": (6 * 25, 16 * 25),
    "fc1": (400, 120),
    "fc2": (120, 84),
    "fc3": (84, 10),
}
SIGMAS = 5.0  # standard errors allowed for means and stds
RANGE_SLACK = 20.0  # multiples of bound / n allowed between the extremes and bound
KS_C_ALPHA = 1.949  # sqrt(-ln(alpha / 2) / 2) at alpha = 0.001
KS_SAMPLE = 20_000  # values per side fed to the KS statistic


def bound(name: str, kind: str) -> float:
    """The half-width of the uniform distribution a parameter is drawn from."""
    fan_in, fan_out = FANS[name]
    if kind == "kernel":
        return math.sqrt(6.0 / (fan_in + fan_out))
    return 1.0 / math.sqrt(fan_in)


@dataclasses.dataclass(frozen=True)
class Stats:
    """Summary of all drawn values of one parameter tensor on one side."""

    n: int
    min: float
    max: float
    mean: float
    std: float


def summarise(values: np.ndarray) -> Stats:
    v = values.astype(np.float64).ravel()
    return Stats(
        len(v), float(v.min()), float(v.max()), float(v.mean()), float(v.std())
    )


def draw_ours(draws: int) -> dict[tuple[str, str], np.ndarray]:
    """All values of each parameter over `draws` LeNets, seeds 0..draws-1."""
    samples: dict[tuple[str, str], list] = {}
    for seed in range(draws):
        params = nnx.to_pure_dict(nnx.state(LeNet(rngs=nnx.Rngs(seed)), nnx.Param))
        for name, arrays in params.items():
            for kind, value in arrays.items():
                samples.setdefault((name, kind), []).append(np.asarray(value).ravel())
    return {key: np.concatenate(parts) for key, parts in samples.items()}


def draw_torch(draws: int) -> dict[tuple[str, str], np.ndarray]:
    """All values of each parameter over `draws` book-initialised PyTorch LeNets."""
    samples: dict[tuple[str, str], list] = {}
    for seed in range(draws):
        params = params_from_torch(seeded_book_lenet(seed).state_dict())
        for name, arrays in params.items():
            for kind, value in arrays.items():
                samples.setdefault((name, kind), []).append(value.ravel())
    return {key: np.concatenate(parts) for key, parts in samples.items()}


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Largest gap between the empirical CDFs of two samples."""
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, grid, side="right") / len(a)
    cdf_b = np.searchsorted(b, grid, side="right") / len(b)
    return float(np.max(np.abs(cdf_a - cdf_b)))


def _subsample(values: np.ndarray, seed: int) -> np.ndarray:
    if len(values) <= KS_SAMPLE:
        return values
    return np.random.default_rng(seed).choice(values, KS_SAMPLE, replace=False)


def _range_row(case: str, s: Stats, a: float) -> Row:
    """Values inside [-a, a], and both extremes within the expected gap of it."""
    gap = max(a - s.max, s.min + a)
    tol = RANGE_SLACK * 2 * a / s.n
    inside = s.min >= -a * (1 + 1e-6) and s.max <= a * (1 + 1e-6)
    note = "" if inside else f"values outside +-{a:.6g}: [{s.min:.6g}, {s.max:.6g}]"
    return Row(case, gap, tol, inside and gap <= tol, note)


def compare_tensor(
    name: str, kind: str, ours: np.ndarray, theirs: np.ndarray
) -> tuple[list[Row], dict]:
    """Rows for one parameter tensor, and its statistics for the report's table."""
    a = bound(name, kind)
    sigma = a / math.sqrt(3.0)
    o, t = summarise(ours), summarise(theirs)
    label = f"{name}.{kind}"
    se_mean = {side: sigma / math.sqrt(s.n) for side, s in (("o", o), ("t", t))}
    # Sample std of a uniform: standard error sigma * sqrt((kurtosis - 1) / (4n)),
    # kurtosis 9/5, i.e. sigma * sqrt(0.2 / n).
    se_std = {side: sigma * math.sqrt(0.2 / s.n) for side, s in (("o", o), ("t", t))}
    ks = ks_statistic(_subsample(ours, 0), _subsample(theirs, 1))
    n_o, n_t = min(o.n, KS_SAMPLE), min(t.n, KS_SAMPLE)
    ks_crit = KS_C_ALPHA * math.sqrt((n_o + n_t) / (n_o * n_t))
    rows = [
        _range_row(f"{label} range, ours (bound {a:.4f})", o, a),
        _range_row(f"{label} range, PyTorch (bound {a:.4f})", t, a),
        within(f"{label} mean, ours vs 0", o.mean, SIGMAS * se_mean["o"]),
        within(f"{label} mean, PyTorch vs 0", t.mean, SIGMAS * se_mean["t"]),
        within(
            f"{label} mean, ours vs PyTorch",
            o.mean - t.mean,
            SIGMAS * math.hypot(se_mean["o"], se_mean["t"]),
        ),
        within(
            f"{label} std, ours vs {sigma:.4f}", o.std - sigma, SIGMAS * se_std["o"]
        ),
        within(
            f"{label} std, PyTorch vs {sigma:.4f}", t.std - sigma, SIGMAS * se_std["t"]
        ),
        within(
            f"{label} std, ours vs PyTorch",
            o.std - t.std,
            SIGMAS * math.hypot(se_std["o"], se_std["t"]),
        ),
        within(f"{label} KS statistic, ours vs PyTorch", ks, ks_crit),
    ]
    table = {"tensor": label, "bound": a, "std": sigma, "ours": o, "pytorch": t}
    return rows, table


def compare_init(draws: int = 200) -> tuple[list[Row], list[dict]]:
    """Rows for every parameter tensor over `draws` inits a side, and the stats."""
    ours, theirs = draw_ours(draws), draw_torch(draws)
    rows, tables = [], []
    for name in FANS:
        for kind in ("kernel", "bias"):
            r, table = compare_tensor(
                name, kind, ours[(name, kind)], theirs[(name, kind)]
            )
            rows += r
            tables.append(table)
    return rows, tables
