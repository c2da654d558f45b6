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
why). Other shapes, activations, poolings or dtypes always go that way.

The blocks have first derivatives (what training needs) but no second ones: for
Hessians or gradient penalties, trace the model inside `disabled()`. Forward mode
(`jax.jvp`, `jax.jacfwd`) works on neither path: the CPU convolutions of
`lenet_jax.convolution` are `custom_vjp` functions too.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
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
ENV_SWITCH = "LENET_JAX_NATIVE"  # "0" (or false, no, off) turns the kernels off

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
    """The kernels could not be compiled or loaded.

    args[0] says why in one line; args[1], when there, is the compiler's output.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


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
    return Path(root).expanduser() if root else Path.home() / ".cache" / "lenet_jax"


def switched_off_by_env() -> bool:
    """Whether $LENET_JAX_NATIVE asks for no native kernels (0, false, no, off).

    1, true, yes, on or nothing keep them; anything else keeps them with a warning.
    """
    value = os.environ.get(ENV_SWITCH, "").strip().lower()
    if value in ("0", "false", "no", "off"):
        return True
    if value not in ("", "1", "true", "yes", "on"):
        _warn_unknown_switch(os.environ[ENV_SWITCH])
    return False


@functools.cache
def _warn_unknown_switch(value: str) -> None:
    log.warning(
        "%s=%r not understood (0/false/no/off turn the native kernels off); "
        "they stay on",
        ENV_SWITCH,
        value,
    )


def _compiler() -> list[str]:
    """The compiler command: $CXX (split like a shell would), else g++ or c++."""
    if os.environ.get("CXX", "").strip():
        try:
            return shlex.split(os.environ["CXX"])
        except ValueError as e:
            raise NativeBuildError(
                f"CXX={os.environ['CXX']!r} is not a command: {e}"
            ) from None
    cxx = shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise NativeBuildError("no C++ compiler found (install g++ or set CXX)")
    return [cxx]


def build_key(cxx: list[str]) -> str:
    """A name for everything that goes into building the library.

    `-march=native` makes the code specific to this CPU, so its model and feature
    flags are part of it, as are the source, the flags, the compiler and jax's
    version (its FFI headers).
    """
    key = hashlib.sha256()
    for part in (
        SOURCE.read_bytes(),
        " ".join(compiler_flags()).encode(),
        " ".join(cxx).encode(),
        jax.__version__.encode(),
        platform.machine().encode(),
        _cpu_description().encode(),
    ):
        key.update(part)
        key.update(b"\0")
    return key.hexdigest()[:16]


def _cpu_description() -> str:
    """The first CPU's model name and feature flags, as /proc/cpuinfo lists them."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    wanted = ("model name", "flags", "Features", "CPU part")
    seen = {}
    for line in lines:
        name = line.split(":", 1)[0].strip()
        if name in wanted and name not in seen:
            seen[name] = line
    return "\n".join(seen.values()) or platform.processor()


def _content_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def cached_library(key: str) -> Path | None:
    """The cached library for `key`, if a complete one is there.

    A library is saved as conv_blocks-<key>-<hash of its bytes>.so, so a damaged
    file (truncated, zeroed) is recognised before it is loaded, which could crash
    the process, and is removed.
    """
    for path in sorted(cache_dir().glob(f"conv_blocks-{key}-*.so")):
        try:
            intact = path.stem.rsplit("-", 1)[1] == _content_hash(path)
        except OSError:
            continue
        if intact:
            return path
        try:
            path.unlink()
            log.warning("removed %s, whose contents did not match its name", path)
        except OSError as e:
            log.warning("cannot remove %s, which is damaged: %s", path, e)
    return None


def build(cxx: list[str] | None = None) -> Path:
    """Compile `csrc/conv_blocks.cc` into the cache unless it is there; its path.

    The library is written under a temporary name and renamed once complete, so a
    build that is interrupted, or two processes building at once, never leave a
    broken library under the final name.
    """
    cxx = cxx or _compiler()
    key = build_key(cxx)
    if cache_dir().is_dir():
        _remove_stale_temporaries(cache_dir())
    found = cached_library(key)
    if found is not None:
        return found
    directory = cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".so.tmp")
        os.close(fd)
    except OSError as e:
        raise NativeBuildError(
            f"cannot write the kernel cache {directory} (set LENET_JAX_CACHE to "
            f"another directory): {e}"
        ) from None
    cmd = [*cxx, *compiler_flags(), "-shared", "-fPIC", "-w"]
    cmd += ["-I", jax.ffi.include_dir(), str(SOURCE), "-o", tmp]
    log.info("compiling the native LeNet kernels: %s", shlex.join(cmd))
    try:
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as e:
            raise NativeBuildError(f"could not run {shlex.join(cxx)}: {e}") from None
        if result.returncode != 0:
            raise NativeBuildError(
                f"{shlex.join(cxx)} failed to compile {SOURCE.name} (exit status "
                f"{result.returncode})",
                result.stderr.strip(),
            )
        os.chmod(tmp, 0o755)  # readable by everyone who shares the cache
        target = directory / f"conv_blocks-{key}-{_content_hash(Path(tmp))}.so"
        try:
            os.replace(tmp, target)
        except OSError as e:
            raise NativeBuildError(
                f"cannot save the library as {target}: {e}"
            ) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _remove_stale_temporaries(directory: Path, age_seconds: float = 3600) -> None:
    """Delete what builds killed more than an hour ago left behind."""
    now = time.time()
    for tmp in directory.glob("*.so.tmp"):
        with contextlib.suppress(OSError):
            if now - tmp.stat().st_mtime > age_seconds:
                tmp.unlink()


_load_lock = threading.Lock()


def _load() -> str | None:
    """Build, load and register the kernels once; None if that worked, else why not.

    The reason is one line; a compiler's own messages go to the log only.
    """
    with _load_lock:  # threads making the first call at once wait for one build
        return _load_once()


@functools.cache
def _load_once() -> str | None:
    try:
        library = _load_library()
        handlers = {name: getattr(library, sym) for name, sym in TARGETS.items()}
    except (NativeBuildError, OSError, AttributeError) as e:
        reason = str(e)
        details = e.args[1] if isinstance(e, NativeBuildError) and e.args[1:] else ""
        log.warning(
            "native LeNet kernels not used (%s); the convolution blocks run as "
            "XLA operations instead: same results, slower on the CPU%s",
            reason,
            f"\n{details}" if details else "",
        )
        return reason
    for name, handler in handlers.items():
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(handler), platform="cpu")
    return None


def _load_library() -> ctypes.CDLL:
    """The compiled library, built if needed.

    A cached copy that won't load all the same is removed and built again once.
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

    For comparing the two paths (tests, the parity suite). JAX keeps one trace per
    function object: a function traced before (by jit, pmap, checkpoint, ...) keeps
    the path it was traced with, so trace a new function (a fresh closure) inside.
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
    if switched_off_by_env():
        return f"{ENV_SWITCH}={os.environ[ENV_SWITCH]} is set"
    if jax.default_backend() != "cpu":
        return f"the backend is {jax.default_backend()}, not the CPU"
    return _load()


def block_available(
    x_shape, kernel_shape, padding, activation: str, pool: str, dtypes=()
) -> bool:
    """Whether `conv_block` serves this layer configuration in this process.

    `dtypes` are those of the input, kernel and bias: all must be float32.
    """
    key = (tuple(x_shape[1:]), tuple(kernel_shape), _padding(padding))
    return (
        key in BLOCKS
        and activation in ACTIVATIONS
        and pool == "avg"
        and all(jnp.dtype(d) == jnp.float32 for d in dtypes)
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


SECOND_ORDER = (
    "lenet_jax's native conv blocks have first derivatives only (the gradients "
    "training needs); for second derivatives (Hessians, gradient penalties), trace "
    "the model inside `lenet_jax.native.disabled()` or set LENET_JAX_NATIVE=0"
)


def _ffi(target: str, shapes, **attributes):
    """`jax.ffi.ffi_call(target)` with attributes bound, as a function of arrays.

    The kernels have no derivatives of their own (the block's first derivative is
    `_block_bwd`, itself a kernel); differentiating a call raises SECOND_ORDER
    instead of JAX's generic message.
    """
    call = jax.ffi.ffi_call(target, shapes, vmap_method="sequential")

    @jax.custom_jvp
    def kernel_call(*args):
        return call(*args, **attributes)

    @kernel_call.defjvp
    def _refuse(primals, tangents):
        raise NotImplementedError(SECOND_ORDER)

    return kernel_call


def _forward_call(number: int, activation: str, x, kernel, bias, save: bool):
    _, out_shape, acts_shape = BLOCKS[_key_of(number)]
    n = x.shape[0]
    shapes = (
        jax.ShapeDtypeStruct((n, *out_shape), jnp.float32),
        jax.ShapeDtypeStruct((n, *acts_shape) if save else (0,), jnp.float32),
    )
    act = np.int32(ACTIVATIONS[activation])
    call = _ffi(f"lenet_block{number}_forward", shapes, activation=act, save=save)
    return call(x, kernel, bias)


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
        call = _ffi("lenet_block1_backward", shapes, activation=act)
        d_kernel, d_bias = call(x, acts, g)
        # The images' gradient: only wanted when differentiating with respect to the
        # input, so it is left to XLA, which drops it when nothing uses it.
        d_x = _block1_input_grad(x, kernel, acts, g, activation)
        return d_x, d_kernel, d_bias
    shapes = (
        jax.ShapeDtypeStruct(x.shape, jnp.float32),
        jax.ShapeDtypeStruct(kernel.shape, jnp.float32),
        jax.ShapeDtypeStruct(kernel.shape[-1:], jnp.float32),
    )
    call = _ffi("lenet_block2_backward", shapes, activation=act)
    return call(x, kernel, acts, g)


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
