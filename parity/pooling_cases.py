"""The pooling configurations the suite runs through both PyTorch and lenet_jax.

A `PoolCase` is one call: max or avg pooling, its arguments in PyTorch's names, and
an input described by its PyTorch shape ((N, C, H, W) or (C, H, W); other ranks to
test rejection), its dtype and the kind of values it holds. Which cases are legal is
not decided here: PyTorch decides when the case runs (see `compare_pooling`).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import numpy as np

Size = int | tuple[int, ...]

KERNELS: tuple[Size, ...] = (
    1,
    2,
    3,
    4,
    5,
    (1, 2),
    (2, 1),
    (1, 3),
    (3, 2),
    (2, 5),
    (4, 3),
    (5, 1),
    (3, 5),
)
# (stride, ceil_mode) settings; ceil_mode only matters with a stride above 1.
STRIDE_CEIL: tuple[tuple[Size | None, bool], ...] = (
    (None, False),
    (2, True),
    (1, False),
    ((2, 3), False),
    (None, True),
    (3, True),
    (2, False),
    ((2, 3), True),
)
# (N, C, H, W) in PyTorch's layout: odd sides, N and C above 1, and one unbatched.
SHAPES: tuple[tuple[int, ...], ...] = (
    (2, 3, 7, 9),
    (1, 2, 8, 8),
    (3, 1, 11, 5),
    (2, 2, 9, 6),
    (3, 7, 9),
)
WIDE_SHAPE = (2, 3, 13, 15)  # room for dilated windows
KINDS = ("normal", "negative", "nonfinite")


@dataclasses.dataclass(frozen=True)
class PoolCase:
    """One pooling call, in PyTorch's argument names and input layout.

    `shape` is the PyTorch input shape; ours is the same with the channel axis
    moved last. `dilation` is used by max pooling only, `count_include_pad` and
    `divisor_override` by avg pooling only.
    """

    mode: str
    kernel_size: Any
    stride: Any = None
    padding: Any = 0
    dilation: Any = 1
    ceil_mode: bool = False
    count_include_pad: bool = True
    divisor_override: Any = None
    shape: tuple[int, ...] = (2, 3, 7, 9)
    dtype: str = "float32"
    kind: str = "normal"
    seed: int = 0

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of max_pool2d / avg_pool2d for this case."""
        common = dict(
            kernel_size=self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            ceil_mode=self.ceil_mode,
        )
        if self.mode == "max":
            return {**common, "dilation": self.dilation}
        return {
            **common,
            "count_include_pad": self.count_include_pad,
            "divisor_override": self.divisor_override,
        }

    def label(self) -> str:
        """A short, unique description, e.g. `max k=3 s=2 p=1 d=2 ceil (2,3,7,9)`."""
        parts = [self.mode, f"k={_fmt(self.kernel_size)}"]
        if self.stride is not None:
            parts.append(f"s={_fmt(self.stride)}")
        if self.padding != 0:
            parts.append(f"p={_fmt(self.padding)}")
        if self.mode == "max" and self.dilation != 1:
            parts.append(f"d={_fmt(self.dilation)}")
        if self.ceil_mode:
            parts.append("ceil")
        if self.mode == "avg" and not self.count_include_pad:
            parts.append("no-pad-count")
        if self.mode == "avg" and self.divisor_override is not None:
            parts.append(f"div={self.divisor_override!r}")
        parts.append(_fmt(self.shape))
        if self.dtype != "float32":
            parts.append(self.dtype)
        if self.kind != "normal":
            parts.append(self.kind)
        return " ".join(parts)

    def make_input(self) -> np.ndarray:
        """The input in PyTorch's layout, drawn from `seed`."""
        rng = np.random.default_rng([self.seed, len(self.shape), *self.shape])
        x = rng.standard_normal(self.shape).astype(np.float32)
        if self.kind == "negative":
            x = -(np.abs(x) + 1.0)
        elif self.kind == "nonfinite":
            special = rng.random(self.shape) < 0.15
            values = rng.choice(
                np.array([np.nan, np.inf, -np.inf], np.float32), self.shape
            )
            x = np.where(special, values, x).astype(np.float32)
        if self.dtype == "bool":
            return x > 0
        if self.dtype in ("int32", "uint8"):
            low = 0 if self.dtype == "uint8" else -100
            return np.clip(np.round(x * 40), low, 100).astype(self.dtype)
        return x.astype(self.dtype)


def _fmt(value) -> str:
    if isinstance(value, tuple):
        return "(" + ",".join(str(v) for v in value) + ")"
    return str(value)


def _half(k: Size) -> tuple[int, int]:
    kh, kw = (k, k) if isinstance(k, int) else k
    return kh // 2, kw // 2


def legal_paddings(kernel: Size) -> list[Size]:
    """Every padding PyTorch allows for a kernel: 0..k//2 per side.

    A square kernel gets each int, plus one uneven pair when one exists; a
    non-square kernel gets every pair.
    """
    ph, pw = _half(kernel)
    if isinstance(kernel, int):
        pads: list[Size] = list(range(ph + 1))
        if ph:
            pads.append((0, ph))
        return pads
    return [(a, b) for a in range(ph + 1) for b in range(pw + 1)]


# --------------------------------------------------------------------------------------
# The grid
# --------------------------------------------------------------------------------------


def _rotate(items: tuple, start: int, count: int) -> list:
    """`count` consecutive items from `start`, wrapping: spreads combinations."""
    return [items[(start + k) % len(items)] for k in range(count)]


def base_cases(per_padding: int = 3) -> list[PoolCase]:
    """Every kernel with every legal padding, each under a few stride/ceil settings.

    The settings rotate through STRIDE_CEIL, so every kernel meets several and every
    setting meets many kernels, without the full product.
    """
    cases = []
    for mode in ("max", "avg"):
        i = 0
        for kernel in KERNELS:
            for pad in legal_paddings(kernel):
                for stride, ceil in _rotate(STRIDE_CEIL, i, per_padding):
                    shape = SHAPES[i % len(SHAPES)]
                    cases.append(
                        PoolCase(
                            mode,
                            kernel,
                            stride,
                            pad,
                            ceil_mode=ceil,
                            shape=shape,
                            seed=i,
                        )
                    )
                    i += 1
    return cases


def dilation_cases() -> list[PoolCase]:
    """Max pooling with dilated windows, paddings and settings rotating."""
    cases = []
    kernels = (2, 3, (2, 3), (3, 1), 5)
    dilations = (2, 3, (1, 2), (3, 2))
    for i, (kernel, dilation) in enumerate(itertools.product(kernels, dilations)):
        pads = legal_paddings(kernel)
        for k, (stride, ceil) in enumerate(_rotate(STRIDE_CEIL, 3 * i, 2)):
            cases.append(
                PoolCase(
                    "max",
                    kernel,
                    stride,
                    pads[(i + k) % len(pads)],
                    dilation=dilation,
                    ceil_mode=ceil,
                    shape=WIDE_SHAPE,
                    seed=i,
                )
            )
    return cases


def avg_option_cases() -> list[PoolCase]:
    """Average pooling without counting padding, and with divisor_override."""
    cases = []
    i = 0
    for kernel in (2, 3, 5, (3, 2), (2, 5)):
        for pad in legal_paddings(kernel):
            for stride, ceil in _rotate(STRIDE_CEIL, i, 2):
                cases.append(
                    PoolCase(
                        "avg",
                        kernel,
                        stride,
                        pad,
                        ceil_mode=ceil,
                        count_include_pad=False,
                        shape=SHAPES[i % 4],
                        seed=i,
                    )
                )
                i += 1
    combos = itertools.product((2, 3, (3, 5)), (1, 3, -2), (True, False))
    for i, (kernel, divisor, include) in enumerate(combos):
        stride, ceil = STRIDE_CEIL[i % len(STRIDE_CEIL)]
        cases.append(
            PoolCase(
                "avg",
                kernel,
                stride,
                legal_paddings(kernel)[-1],
                ceil_mode=ceil,
                count_include_pad=include,
                divisor_override=divisor,
                shape=SHAPES[i % len(SHAPES)],
                seed=i,
            )
        )
    return cases


def value_kind_cases() -> list[PoolCase]:
    """All-negative inputs and inputs holding inf, -inf and NaN."""
    configs = [
        dict(kernel_size=2),
        dict(kernel_size=3, stride=1, padding=1),
        dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
        dict(kernel_size=(2, 3), stride=1),
        dict(kernel_size=5, stride=2, padding=2, ceil_mode=True),
        dict(kernel_size=4, stride=3, padding=(1, 2)),
    ]
    extra = {
        "max": [dict(kernel_size=3, stride=1, padding=1, dilation=2)],
        "avg": [
            dict(kernel_size=3, stride=2, padding=1, count_include_pad=False),
            dict(kernel_size=3, padding=1, ceil_mode=True, divisor_override=2),
        ],
    }
    cases = []
    for kind in ("negative", "nonfinite"):
        for mode in ("max", "avg"):
            for i, config in enumerate(configs + extra[mode]):
                shape = WIDE_SHAPE if i % 2 else SHAPES[i % len(SHAPES)]
                cases.append(PoolCase(mode, shape=shape, kind=kind, seed=i, **config))
    return cases


def dtype_cases() -> list[PoolCase]:
    """Integer and half-precision inputs (values only; no gradients exist)."""
    cases = []
    for mode in ("max", "avg"):
        for dtype in ("int32", "uint8", "float16"):
            cases.append(PoolCase(mode, 2, dtype=dtype))
            cases.append(PoolCase(mode, 3, 2, 1, ceil_mode=True, dtype=dtype))
    return cases


def argument_form_cases() -> list[PoolCase]:
    """Sizes as 1-tuples, an empty stride, an empty batch: all accepted by PyTorch."""
    cases = []
    for mode in ("max", "avg"):
        cases += [
            PoolCase(mode, (2,)),
            PoolCase(mode, 3, stride=(), padding=(1,)),
            PoolCase(mode, 3, stride=(2,), padding=1),
            PoolCase(mode, 2, shape=(0, 2, 6, 6)),
            PoolCase(mode, 3, 2, 1, ceil_mode=True, shape=(1, 1, 1, 1)),
        ]
    cases.append(PoolCase("max", 3, 1, 1, dilation=(2,), shape=WIDE_SHAPE))
    return cases


def rejection_cases() -> list[PoolCase]:
    """Configurations PyTorch refuses; ours must raise ValueError for each."""
    cases = []
    for mode in ("max", "avg"):
        for kernel in KERNELS:
            ph, pw = _half(kernel)
            cases.append(PoolCase(mode, kernel, padding=(ph + 1, 0)))
            cases.append(PoolCase(mode, kernel, padding=(0, pw + 1)))
        bad_args = [
            dict(kernel_size=0),
            dict(kernel_size=-1),
            dict(kernel_size=(2, 0)),
            dict(kernel_size=(2, 2, 2)),
            dict(kernel_size=()),
            dict(kernel_size=2.0),
            dict(kernel_size=True),
            dict(kernel_size=2, stride=0),
            dict(kernel_size=2, stride=-1),
            dict(kernel_size=2, stride=(1, 0)),
            dict(kernel_size=2, stride=(1, 2, 3)),
            dict(kernel_size=2, stride=1.5),
            dict(kernel_size=3, padding=-1),
            dict(kernel_size=3, padding=(1, 1, 1)),
            dict(kernel_size=3, padding=True),
            dict(kernel_size=3, shape=(1, 1, 2, 2)),
            dict(kernel_size=(1, 4), shape=(1, 1, 5, 3)),
            dict(kernel_size=2, shape=(5, 5)),
            dict(kernel_size=2, shape=(1, 1, 1, 5, 5)),
            dict(kernel_size=2, shape=(1, 0, 5, 5)),
            dict(kernel_size=2, shape=(1, 1, 0, 5)),
            dict(kernel_size=2, shape=(2, 0, 5)),
            dict(kernel_size=2, dtype="bool"),
        ]
        if mode == "max":
            bad_args += [
                dict(kernel_size=2, dilation=0),
                dict(kernel_size=2, dilation=-1),
                dict(kernel_size=2, dilation=(1, 0)),
                dict(kernel_size=3, dilation=3, shape=(1, 1, 6, 6)),
                dict(kernel_size=3, padding=2, dilation=2),
            ]
        else:
            bad_args += [
                dict(kernel_size=2, divisor_override=0),
                dict(kernel_size=2, divisor_override=2.5),
                dict(kernel_size=2, divisor_override=True),
            ]
        cases += [PoolCase(mode, **args) for args in bad_args]
    return cases


def full_grid() -> list[PoolCase]:
    """Every case of the full report."""
    return (
        base_cases()
        + dilation_cases()
        + avg_option_cases()
        + value_kind_cases()
        + dtype_cases()
        + argument_form_cases()
        + rejection_cases()
    )


def quick_grid(every: int = 6) -> list[PoolCase]:
    """A subset for CI: every `every`-th regular case, most of the special ones."""
    regular = base_cases() + dilation_cases() + avg_option_cases()
    return (
        regular[::every]
        + value_kind_cases()[::2]
        + dtype_cases()
        + argument_form_cases()
        + rejection_cases()
    )
