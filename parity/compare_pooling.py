"""Pooling: our functions and modules against torch.nn.functional, case by case.

For each `PoolCase`, PyTorch runs first and decides what must happen:

* PyTorch accepts the case: our function's values must match to 1e-6, its
  gradients (`jax.vjp` against autograd, the same cotangent) to 1e-5, and our
  module's values to 1e-6. All three are computed inside one `jax.jit`, as a
  training step would run them; if that fails, a row says so and they are
  computed op by op instead, so the numbers are still compared.
* PyTorch raises: our function and our module must both raise ValueError.

Rows are named `<group>: <case label>`, the group saying which function and which
check (e.g. `max_pool2d gradients (nonfinite)`), so the report can total them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

from lenet_jax import pooling
from parity.pooling_cases import PoolCase
from parity.reference import pool2d_loops
from parity.rows import Row, compare

log = logging.getLogger(__name__)

VALUE_TOL = 1e-6
GRAD_TOL = 1e-5
HALF_TOL = 2e-3  # one float16 ulp at the largest inputs drawn (|x| < 4)

TORCH_FNS = {"max": F.max_pool2d, "avg": F.avg_pool2d}
OUR_FNS = {"max": pooling.max_pool2d, "avg": pooling.avg_pool2d}
OUR_MODULES = {"max": pooling.MaxPool2d, "avg": pooling.AvgPool2d}


def to_ours(x: np.ndarray) -> np.ndarray:
    """PyTorch layout (N, C, H, W) or (C, H, W) -> ours, channels last."""
    return np.moveaxis(x, -3, -1) if x.ndim >= 3 else x


def to_torch_layout(y: np.ndarray) -> np.ndarray:
    """Our (N, H, W, C) or (H, W, C) -> PyTorch's channels-first layout."""
    return np.moveaxis(y, -1, -3) if y.ndim >= 3 else y


def torch_pool(case: PoolCase, x: np.ndarray, cotangent_seed: int):
    """PyTorch's output, and the input gradient for a random cotangent (or None).

    Returns (y, cotangent, grad), arrays in PyTorch's layout; raises whatever
    PyTorch raises for the case.
    """
    floating = x.dtype == np.float32
    xt = torch.from_numpy(x.copy()).requires_grad_(floating)
    yt = TORCH_FNS[case.mode](xt, **case.kwargs())
    if not floating:
        return yt.numpy(), None, None
    cot = np.random.default_rng(cotangent_seed).standard_normal(yt.shape)
    cot = cot.astype(np.float32)
    yt.backward(torch.from_numpy(cot))
    return yt.detach().numpy(), cot, xt.grad.numpy()


def compare_case(case: PoolCase) -> list[Row]:
    """All rows for one case: values, gradients and module, or the rejections."""
    x = case.make_input()
    fn_name = f"{case.mode}_pool2d"
    module_name = OUR_MODULES[case.mode].__name__
    try:
        y_ref, cot, grad_ref = torch_pool(case, x, cotangent_seed=case.seed + 1)
    except Exception as torch_error:  # PyTorch refuses the case: so must we
        return [
            _rejection_row(f"{fn_name} rejects", case, torch_error, _call_fn),
            _rejection_row(f"{module_name} rejects", case, torch_error, _call_module),
        ]

    suffix = _group_suffix(case)
    tol = HALF_TOL if case.dtype == "float16" else VALUE_TOL
    x_ours = to_ours(x)
    cot_ours = None if cot is None else to_ours(cot)
    jit_error = None
    try:
        y, grad, y_mod = our_pool(case, x_ours, cot_ours, jit=True)
    except Exception as e:
        # Under jit it failed; try op by op, so the numbers are still compared.
        jit_error = e
        try:
            y, grad, y_mod = our_pool(case, x_ours, cot_ours, jit=False)
        except Exception as eager_error:
            return [_raised_row(f"{fn_name} values{suffix}", case, eager_error)]

    rows = [_named(compare("", y, y_ref, tol), fn_name, "values", suffix, case)]
    if cot is not None:
        row = compare("", grad, grad_ref, GRAD_TOL)
        rows.append(_named(row, fn_name, "gradients", suffix, case))
    row = compare("", y_mod, y_ref, tol)
    rows.append(_named(row, module_name, "values", suffix, case))
    what = "value and gradient" if cot is not None else "value"
    group = f"{fn_name} {what} under jax.jit{suffix}: {case.label()}"
    if jit_error is None:
        rows.append(Row(group, None, 0.0, True))
    else:
        note = f"fails under jit only: {type(jit_error).__name__}: "
        rows.append(Row(group, None, 0.0, False, note + _first_line(jit_error)))
    return rows


def our_pool(
    case: PoolCase, x: np.ndarray, cotangent: np.ndarray | None, jit: bool = True
):
    """Our function's output and input gradient, and our module's output.

    x and cotangent are channels-last; the results come back in PyTorch's layout
    (grad None without a cotangent). With `jit`, one `jax.jit` compiles all three,
    several times faster than running the pooling op by op (and the way a training
    step runs it).
    """
    fn, kwargs = OUR_FNS[case.mode], case.kwargs()
    module = OUR_MODULES[case.mode](**kwargs)

    def forward(a):
        return fn(a, **kwargs)

    def run(a, cot):
        if cot is None:
            return forward(a), None, module(a)
        y, vjp = jax.vjp(forward, a)
        (grad,) = vjp(cot)
        return y, grad, module(a)

    cot = None if cotangent is None else jnp.asarray(cotangent)
    outputs = (jax.jit(run) if jit else run)(jnp.asarray(x), cot)
    return tuple(None if o is None else to_torch_layout(np.asarray(o)) for o in outputs)


def compare_cases(cases: Iterable[PoolCase]) -> list[Row]:
    """Rows of every case, in order; logs progress every 100 cases."""
    rows = []
    cases = list(cases)
    for i, case in enumerate(cases):
        if i and i % 100 == 0:
            log.info("pooling: %d of %d cases", i, len(cases))
        rows += compare_case(case)
    return rows


def _group_suffix(case: PoolCase) -> str:
    tags = [t for t in (case.dtype, case.kind) if t not in ("float32", "normal")]
    return f" ({', '.join(tags)})" if tags else ""


def _named(row: Row, name: str, what: str, suffix: str, case: PoolCase) -> Row:
    return Row(
        f"{name} {what}{suffix}: {case.label()}",
        row.max_abs_diff,
        row.tolerance,
        row.passed,
        row.note,
    )


def _call_fn(case: PoolCase, x):
    return OUR_FNS[case.mode](x, **case.kwargs())


def _call_module(case: PoolCase, x):
    return OUR_MODULES[case.mode](**case.kwargs())(x)


def _rejection_row(group: str, case: PoolCase, torch_error, call) -> Row:
    """Ours must raise ValueError where PyTorch raised torch_error."""
    seen = f"torch {type(torch_error).__name__}: {_first_line(torch_error)}"
    try:
        call(case, jnp.asarray(to_ours(case.make_input())))
    except ValueError as e:
        return Row(f"{group}: {case.label()}", None, 0.0, True, f"ours: {e}")
    except Exception as e:
        note = f"ours raised {type(e).__name__} ({_first_line(e)}), not ValueError; "
        return Row(f"{group}: {case.label()}", None, 0.0, False, note + seen)
    return Row(f"{group}: {case.label()}", None, 0.0, False, f"ours accepted; {seen}")


def _raised_row(group: str, case: PoolCase, error: Exception) -> Row:
    note = f"PyTorch accepts; ours raised {type(error).__name__}: {_first_line(error)}"
    return Row(f"{group}: {case.label()}", None, 0.0, False, note)


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0][:120] if text else ""


# --------------------------------------------------------------------------------------
# The chapter's from-scratch pool2d
# --------------------------------------------------------------------------------------

LOOP_SHAPES = ((4, 4), (5, 7), (7, 5), (6, 6))
LOOP_POOL_SIZES = (1, 2, 3, (2, 3), (3, 1), (1, 4))


def compare_pool2d_loops(seed: int = 0) -> list[Row]:
    """Our `pool2d` against the book's loop version, and the loops against PyTorch.

    PyTorch's view of the same computation is `max_pool2d`/`avg_pool2d` with
    stride 1 and no padding on X[None, None].
    """
    rows = []
    rng = np.random.default_rng(seed)
    for shape in LOOP_SHAPES:
        X = rng.standard_normal(shape).astype(np.float32)
        for size in LOOP_POOL_SIZES:
            for mode in ("max", "avg"):
                label = f"{mode} pool_size={size} X{shape}"
                expected = pool2d_loops(X, size, mode)
                ours = np.asarray(pooling.pool2d(jnp.asarray(X), size, mode))
                rows.append(
                    compare(f"pool2d vs loops: {label}", ours, expected, VALUE_TOL)
                )
                t = TORCH_FNS[mode](torch.from_numpy(X)[None, None], size, stride=1)
                rows.append(
                    compare(
                        f"loops vs torch: {label}", expected, t[0, 0].numpy(), VALUE_TOL
                    )
                )
    return rows
