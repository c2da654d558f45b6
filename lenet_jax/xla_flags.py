"""Process settings that suit this workload: XLA options and glibc malloc tuning.

Nothing here runs on import. The command-line programs (`train.py`, the benchmark)
call `reexec_with_tuned_env` first thing, which restarts the process once with:

- `--xla_cpu_experimental_ynn_fusion_type=individual_dot` in XLA_FLAGS: XLA:CPU
  then hands each matrix product to its YNNPACK kernels on its own, which for the
  products of this network's gradients is 2.5-3x faster than the default route.
  Ignored off the CPU.
- glibc malloc thresholds (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_,
  MALLOC_TOP_PAD_): without them, a process that frees and reallocates large blocks
  every step (PyTorch's loop in particular) can fall into a mode where each step
  maps and unmaps pages, and runs at 60% speed. They are read when the process
  starts, hence the restart.
- with `devices` > 1 on the CPU, `--xla_force_host_platform_device_count`, so that
  pmap has that many (simulated) devices.

A library user's process is never changed behind their back: call these yourself
if you want them. A setting the user already made (an XLA flag of the same name, a
MALLOC_* variable) is kept as it is.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

CPU_XLA_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=individual_dot",)
MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "33554432",
    "MALLOC_TRIM_THRESHOLD_": "4294967296",
    "MALLOC_TOP_PAD_": "268435456",
}
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
MARKER = "LENET_JAX_TUNED_ENV"  # set in the restarted process, so it restarts once


def _flag_name(flag: str) -> str:
    return flag.split("=", 1)[0]


def tuned_env(environ: Mapping[str, str], devices: int = 1) -> dict[str, str]:
    """A copy of environ with our XLA flags and malloc settings added.

    Args:
      environ: the environment to start from, e.g. `os.environ`.
      devices: how many host devices XLA:CPU should simulate (1: leave it alone).
    """
    env = dict(environ)
    flags = env.get("XLA_FLAGS", "").split()
    present = {_flag_name(f) for f in flags}
    wanted = list(CPU_XLA_FLAGS)
    if devices > 1:
        wanted.append(f"{DEVICE_COUNT_FLAG}={devices}")
    flags += [f for f in wanted if _flag_name(f) not in present]
    env["XLA_FLAGS"] = " ".join(flags)
    for name, value in MALLOC_ENV.items():
        env.setdefault(name, value)
    env[MARKER] = "1"
    return env


def reexec_with_tuned_env(argv: Sequence[str], devices: int = 1) -> None:
    """Restart this process as `python *argv` with `tuned_env`, unless it was already.

    Call it before JAX initialises a backend. Returns only in the restarted
    process (or when the settings were already in place).

    Args:
      argv: the command to run again after the interpreter, e.g. `sys.argv` for a
        script or `["-m", "lenet_jax.bench", *sys.argv[1:]]` for a module.
      devices: passed to `tuned_env`.
    """
    if os.environ.get(MARKER):
        return
    env = tuned_env(os.environ, devices)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv], env)
