"""One checked comparison is a `Row`: what was compared, how far apart, how far allowed.

Every comparison in the suite returns rows, so the pytest tests and the report read
the same numbers: a test asserts that its rows passed, the report tabulates them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Row:
    """One check.

    Attributes:
      case: what was compared, e.g. "conv1.kernel gradient".
      max_abs_diff: the largest absolute difference found (inf where non-finite
        values disagree or shapes differ; None where no number applies, as for an
        error that must be raised).
      tolerance: the largest difference allowed.
      passed: whether the check holds.
      note: why it failed, or what was seen where no number applies.
    """

    case: str
    max_abs_diff: float | None
    tolerance: float
    passed: bool
    note: str = ""


def max_abs_diff(ours, ref) -> float:
    """Largest |ours - ref| over two arrays of the same shape, NaN-aware.

    NaN matching NaN and an infinity matching the same infinity count as equal; any
    other disagreement on a non-finite value, or a shape mismatch, gives inf.
    """
    a = np.asarray(ours, dtype=np.float64)
    b = np.asarray(ref, dtype=np.float64)
    if a.shape != b.shape:
        return math.inf
    if a.size == 0:
        return 0.0
    both_nan = np.isnan(a) & np.isnan(b)
    finite = np.isfinite(a) & np.isfinite(b)
    same_inf = np.isinf(a) & (a == b)
    if not np.all(both_nan | finite | same_inf):
        return math.inf
    if not finite.any():
        return 0.0
    return float(np.max(np.abs(a[finite] - b[finite])))


def compare(case: str, ours, ref, tolerance: float) -> Row:
    """A row for two arrays that must agree to `tolerance`."""
    diff = max_abs_diff(ours, ref)
    note = ""
    if np.shape(ours) != np.shape(ref):
        note = f"shape {np.shape(ours)} vs {np.shape(ref)}"
    elif math.isinf(diff):
        note = "non-finite values disagree"
    return Row(case, diff, tolerance, diff <= tolerance, note)


def within(case: str, diff: float, tolerance: float, note: str = "") -> Row:
    """A row for a difference computed elsewhere (a statistic, an accuracy gap)."""
    return Row(case, float(diff), tolerance, bool(abs(diff) <= tolerance), note)


def exact(case: str, ours, ref) -> Row:
    """A row for two values that must be equal (shapes, counts, names)."""
    equal = ours == ref
    note = "" if equal else f"ours {ours!r} vs reference {ref!r}"
    return Row(case, 0.0 if equal else math.inf, 0.0, bool(equal), note)


def all_passed(rows: Iterable[Row]) -> bool:
    return all(row.passed for row in rows)


def failures(rows: Iterable[Row]) -> list[Row]:
    return [row for row in rows if not row.passed]


def describe_failures(rows: Sequence[Row], limit: int = 20) -> str:
    """A few lines naming failed rows, for assertion messages."""
    bad = failures(rows)
    lines = [
        f"{row.case}: diff {row.max_abs_diff} > tol {row.tolerance} {row.note}"
        for row in bad[:limit]
    ]
    if len(bad) > limit:
        lines.append(f"... and {len(bad) - limit} more")
    return "\n".join(lines)
