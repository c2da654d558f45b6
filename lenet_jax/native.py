"""LeNet's convolution blocks as native CPU kernels, called through XLA's FFI.

A block is a 5x5 convolution plus bias, an activation and 2x2 average pooling:

    conv_block(x, kernel, bias, padding, activation)
        == avg_pool2d(act(conv2d(x, kernel, bias, padding)), 2)

for LeNet's two shapes, (N, 28, 28, 1) with padding 2 and kernel (5, 5, 1, 6), and
(N, 14, 14, 6) with kernel (5, 5, 6, 16); `activation` "sigmoid" or "relu". On the
CPU this is the fastest exact form we have found (docs/performance.md): the kernels
in `csrc/conv_blocks.cc` do the convolution, activation and pooling of one image at
a time while it sits in the cache, forward and backward, on XLA's own threads.

The kernels are compiled from source with the system's C++ compiler the first time
they are needed, into a cache directory ($LENET_JAX_CACHE, else ~/.cache/lenet_jax),
and reused afterwards. If there is no compiler, or LENET_JAX_NATIVE=0 is set, or the
backend is not the CPU, `block_available` says False and LeNet runs its layers one
by one through `lenet_jax.convolution` instead (the same function; a log line says
why). Other shapes, activations or poolings always go that way.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

log = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "csrc" / "conv_blocks.cc"
ACTIVATIONS = {"sigmoid": 0, "relu": 1}
CXX_FLAGS = ("-O3", "-march=native", "-std=c++17")
# GCC keeps to 256-bit vectors on many AVX-512 CPUs unless told otherwise; the
# kernels' vectors are 16 floats, one 512-bit register.
X86_FLAGS = ("-mprefer-vector-width=512",)
ENV_SWITCH = "LENET_JAX_NATIVE"  # "0" turns the native kernels off

# (input shape without the batch, kernel shape, padding) -> (block number, output
# shape without the batch, saved activations' shape without the batch)
BLOCKS = {
    ((28, 28, 1), (5, 5, 1, 6), ((2, 2), (2, 2))): (1, (14, 14, 6), (6, 28, 28)),
    ((14, 14, 6), (5, 5, 6, 16), ((0, 0), (0, 0))): (2, (5, 5, 16), (10, 10, 16)),
}
TARGETS = {
    "lenet_block1_forward": "LenetBlock1Forward",
    "lenet_block1_backward": "LenetBlock1Backward",
    "lenet_block2_forward": "LenetBlock2Forward",
    "lenet_block2_backward": "LenetBlock2Backward",
}


class NativeBuildError(RuntimeError):
    """The kernels could not be compiled or loaded; the message says why."""


# --------------------------------------------------------------------------------------
# Building and loading the kernels
# --------------------------------------------------------------------------------------


def compiler_flags() -> tuple[str, ...]:
    """The C++ flags for this machine."""
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i686")
    return CXX_FLAGS + (X86_FLAGS if x86 else ())


def cache_dir() -> Path:
    """Where compiled kernels are kept: $LENET_JAX_CACHE or ~/.cache/lenet_jax."""
    root = os.environ.get("LENET_JAX_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "lenet_jax"


def _compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise NativeBuildError("no C++ compiler found (install g++ or set CXX)")
    return cxx


def library_path(cxx: str) -> Path:
    """The cached library's path, named by everything that goes into building it.

    `-march=native` makes the code specific to this CPU, so the machine is part of
    the name, as are the source, the flags, the compiler and jaxlib's FFI version.
    """
    key = hashlib.sha256()
    for part in (
        SOURCE.read_bytes(),
        " ".join(compiler_flags()).encode(),
        cxx.encode(),
        jax.__version__.encode(),
        platform.machine().encode(),
        _cpu_model().encode(),
    ):
        key.update(part)
    return cache_dir() / f"conv_blocks-{key.hexdigest()[:16]}.so"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                return line
    except OSError:
        pass
    return platform.processor()


def build(cxx: str | None = None) -> Path:
    """Compile `csrc/conv_blocks.cc` into the cache unless it is there; its path.

    The library is written under a temporary name and renamed, so a build that is
    interrupted, or two processes building at once, never leave a broken file.
    """
    cxx = cxx or _compiler()
    target = library_path(cxx)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".so.tmp")
    os.close(fd)
    cmd = [cxx, *compiler_flags(), "-shared", "-fPIC", "-w"]
    cmd += ["-I", jax.ffi.include_dir(), str(SOURCE), "-o", tmp]
    log.info("compiling the native LeNet kernels: %s", " ".join(cmd))
    try:
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as e:
            raise NativeBuildError(f"could not run {cxx}: {e}") from None
        if result.returncode != 0:
            raise NativeBuildError(
                f"{cxx} failed to compile {SOURCE.name}:\n{result.stderr.strip()}"
            )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


@functools.cache
def _load() -> str | None:
    """Build, load and register the kernels once; None if that worked, else why not."""
    try:
        library = _load_library()
    except (NativeBuildError, OSError, subprocess.SubprocessError) as e:
        log.warning(
            "native LeNet kernels not used (%s); the convolution blocks run as XLA "
            "operations instead: same results, slower on the CPU",
            e,
        )
        return str(e)
    for name, symbol in TARGETS.items():
        capsule = jax.ffi.pycapsule(getattr(library, symbol))
        jax.ffi.register_ffi_target(name, capsule, platform="cpu")
    return None


def _load_library() -> ctypes.CDLL:
    """The compiled library, built if needed.

    A cached copy that won't load (a damaged file) is removed and built again once.
    """
    path = build()
    try:
        return ctypes.cdll.LoadLibrary(str(path))
    except OSError as e:
        log.warning("rebuilding %s, which could not be loaded (%s)", path, e)
        path.unlink(missing_ok=True)
        return ctypes.cdll.LoadLibrary(str(build()))


_switched_off = False  # set inside `disabled()`


@contextlib.contextmanager
def disabled():
    """Inside this context, models traced run their blocks as XLA operations.

    For comparing the two paths (tests, the parity suite). A function jitted before
    keeps the path it was traced with.
    """
    global _switched_off
    before, _switched_off = _switched_off, True
    try:
        yield
    finally:
        _switched_off = before


def unavailable_reason() -> str | None:
    """Why the native kernels can't be used now, or None if they can."""
    if _switched_off:
        return "switched off by lenet_jax.native.disabled()"
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return f"{ENV_SWITCH}=0 is set"
    if jax.default_backend() != "cpu":
        return f"the backend is {jax.default_backend()}, not the CPU"
    return _load()


def block_available(
    x_shape, kernel_shape, padding, activation: str, pool: str, dtype=jnp.float32
) -> bool:
    """Whether `conv_block` serves this layer configuration in this process."""
    key = (tuple(x_shape[1:]), tuple(kernel_shape), _padding(padding))
    return (
        key in BLOCKS
        and activation in ACTIVATIONS
        and pool == "avg"
        and jnp.dtype(dtype) == jnp.float32
        and unavailable_reason() is None
    )


def describe(activation: str = "sigmoid", pool: str = "avg") -> str:
    """How LeNet with these layers computes its conv blocks here, for logs."""
    reason = unavailable_reason()
    if reason is None and pool != "avg":
        reason = f"no native kernel for {pool} pooling"
    if reason is None and activation not in ACTIVATIONS:
        reason = f"no native kernel for {activation}"
    if reason is None:
        return "native CPU kernels (conv + activation + pool per image)"
    return f"XLA operations ({reason})"


def _padding(padding) -> tuple[tuple[int, int], tuple[int, int]]:
    return tuple(tuple(int(p) for p in pair) for pair in padding)


# --------------------------------------------------------------------------------------
# The block as a differentiable JAX function
# --------------------------------------------------------------------------------------


def conv_block(x, kernel, bias, padding, activation: str = "sigmoid") -> jax.Array:
    """avg_pool2d(act(conv2d(x, kernel, bias, padding)), 2) in one native call.

    Args:
      x: float32 images (N, 28, 28, 1) or activations (N, 14, 14, 6).
      kernel: (5, 5, 1, 6) or (5, 5, 6, 16), HWIO.
      bias: (6,) or (16,).
      padding: ((2, 2), (2, 2)) for the first block, zeros for the second.
      activation: "sigmoid" or "relu".

    Returns:
      (N, 14, 14, 6) or (N, 5, 5, 16).
    """
    key = (tuple(x.shape[1:]), tuple(kernel.shape), _padding(padding))
    if key not in BLOCKS:
        raise ValueError(
            f"conv_block serves LeNet's two blocks only, got input {x.shape}, "
            f"kernel {kernel.shape}, padding {padding}"
        )
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}")
    dtypes = [jnp.dtype(a.dtype) for a in (x, kernel, bias)]
    if any(d != jnp.float32 for d in dtypes):
        raise ValueError(
            "conv_block computes in float32 only, got x {}, kernel {}, bias {}".format(
                *dtypes
            )
        )
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"native kernels unavailable: {reason}")
    return _block(BLOCKS[key][0], activation, x, kernel, bias)


def _forward_call(number: int, activation: str, x, kernel, bias, save: bool):
    _, out_shape, acts_shape = BLOCKS[_key_of(number)]
    n = x.shape[0]
    shapes = (
        jax.ShapeDtypeStruct((n, *out_shape), jnp.float32),
        jax.ShapeDtypeStruct((n, *acts_shape) if save else (0,), jnp.float32),
    )
    call = jax.ffi.ffi_call(
        f"lenet_block{number}_forward", shapes, vmap_method="sequential"
    )
    return call(
        x, kernel, bias, activation=np.int32(ACTIVATIONS[activation]), save=save
    )


def _key_of(number: int):
    return next(k for k, v in BLOCKS.items() if v[0] == number)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _block(number: int, activation: str, x, kernel, bias):
    out, _ = _forward_call(number, activation, x, kernel, bias, save=False)
    return out


def _block_fwd(number: int, activation: str, x, kernel, bias):
    out, acts = _forward_call(number, activation, x, kernel, bias, save=True)
    return out, (x, kernel, acts)


def _block_bwd(number: int, activation: str, residuals, g):
    x, kernel, acts = residuals
    act = np.int32(ACTIVATIONS[activation])
    if number == 1:
        shapes = (
            jax.ShapeDtypeStruct(kernel.shape, jnp.float32),
            jax.ShapeDtypeStruct(kernel.shape[-1:], jnp.float32),
        )
        call = jax.ffi.ffi_call(
            "lenet_block1_backward", shapes, vmap_method="sequential"
        )
        d_kernel, d_bias = call(x, acts, g, activation=act)
        # The images' gradient: only wanted when differentiating with respect to the
        # input, so it is left to XLA, which drops it when nothing uses it.
        d_x = _block1_input_grad(x, kernel, acts, g, activation)
        return d_x, d_kernel, d_bias
    shapes = (
        jax.ShapeDtypeStruct(x.shape, jnp.float32),
        jax.ShapeDtypeStruct(kernel.shape, jnp.float32),
        jax.ShapeDtypeStruct(kernel.shape[-1:], jnp.float32),
    )
    call = jax.ffi.ffi_call("lenet_block2_backward", shapes, vmap_method="sequential")
    return call(x, kernel, acts, g, activation=act)


def _block1_input_grad(x, kernel, acts, g, activation: str) -> jax.Array:
    """d loss / d x of block 1, from the saved activations (N, 6, 28, 28)."""
    a = jnp.transpose(acts, (0, 2, 3, 1))  # (N, 28, 28, 6)
    up = jnp.repeat(jnp.repeat(g, 2, axis=1), 2, axis=2) * 0.25
    dz = up * (a * (1.0 - a) if activation == "sigmoid" else (a > 0).astype(a.dtype))
    # The transposed convolution: a full correlation with the flipped kernel.
    flipped = jnp.transpose(kernel[::-1, ::-1], (0, 1, 3, 2))  # (5, 5, 6, 1)
    return jax.lax.conv_general_dilated(
        dz,
        flipped,
        window_strides=(1, 1),
        padding=((2, 2), (2, 2)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=jax.lax.Precision.HIGHEST,
    )


_block.defvjp(_block_fwd, _block_bwd)
