"""Benchmark: our training loop against the book's PyTorch loop, side by side.

    python -m lenet_jax.bench                       # batch 256, 1 device
    python -m lenet_jax.bench --batch-sizes 128 256 1024 4096 --json
    python -m lenet_jax.bench --devices 2           # pmap on 2 (simulated) devices
    python -m lenet_jax.bench --conv-path xla-ops   # without the native kernels

In one process and on the same Fashion-MNIST arrays, each round times, in turn
(the order alternates between rounds):

- ours: `Trainer.train_epoch` over `--steps` full batches, exactly as train.py
  calls it, so examples/sec is the number train.py prints (training examples over
  the seconds the steps took, compilation excluded);
- PyTorch: the book's loop (`parity.reference_training.sgd_epoch`: the chapter's
  `nn.Sequential` LeNet, SGD lr 0.9, cross-entropy, batches indexed from in-memory
  tensors) over the same batches;
- both evaluations over the 10,000 test images.

The table gives the median examples/sec over the rounds with the range, the ratio
ours / PyTorch of the medians, the time to the first step (compilation for us), the
process's peak resident memory after each side's first round, and the fraction of
the measured matmul peak (a 2048^3 float32 product in the same process) that the
training throughput represents at 2.26 MFLOP per example.

Both sides run at their best settings: the process restarts itself once with the
XLA flags and glibc malloc settings of `lenet_jax.xla_flags` (PyTorch's loop runs
at 60% speed in glibc's default mode). On a shared machine, other processes skew
both sides; the load average is printed, and each side's CPU seconds are reported
in --json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import sys
import time
from contextlib import nullcontext

from lenet_jax import xla_flags

# Multiply-adds per training example: forward and kernel gradient of conv1 (its
# input gradient is not needed), forward, input and kernel gradients of the rest.
MACS_PER_EXAMPLE = 2 * (28 * 28 * 6 * 25) + 3 * (
    10 * 10 * 16 * 150 + 400 * 120 + 120 * 84 + 84 * 10
)
FLOPS_PER_EXAMPLE = 2 * MACS_PER_EXAMPLE  # 2,263,920
LR = 0.9


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lenet_jax.bench",
        description="Our training loop against the book's PyTorch loop, interleaved.",
    )
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[256])
    p.add_argument("--devices", type=int, choices=[1, 2], default=1)
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per side")
    p.add_argument("--steps", type=int, default=60, help="training steps per round")
    p.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="PyTorch's intra-op threads (default: its own choice, one per core)",
    )
    p.add_argument(
        "--conv-path",
        choices=["default", "xla-ops"],
        default="default",
        help="ours with its default conv blocks (native kernels on the CPU where "
        "available) or with them as XLA operations (what lenet_jax ran before "
        "the native kernels; what GPUs run)",
    )
    p.add_argument("--no-eval", action="store_true", help="skip the evaluations")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


@dataclasses.dataclass
class Side:
    """One side's measurements at one batch size."""

    train_examples_per_sec: list[float] = dataclasses.field(default_factory=list)
    train_cpu_seconds: list[float] = dataclasses.field(default_factory=list)
    eval_examples_per_sec: list[float] = dataclasses.field(default_factory=list)
    first_step_seconds: float = 0.0
    peak_rss_mib: float = 0.0

    def summary(self) -> dict:
        out = dataclasses.asdict(self)
        for key in ("train_examples_per_sec", "eval_examples_per_sec"):
            values = out[key]
            if values:
                out[key + "_median"] = statistics.median(values)
        return out


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    """Best float32 GFLOP/s of a size^3 matrix product in JAX on this device."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    product = jax.jit(lambda a: jnp.dot(a, a, precision=jax.lax.Precision.HIGHEST))
    product(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        product(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


class Ours:
    """Our side: the Trainer train.py uses."""

    def __init__(self, data, batch_size: int, devices: int, steps: int):
        import jax
        from flax import nnx

        from lenet_jax.model import LeNet
        from lenet_jax.training import Trainer

        self.data = data
        self.batch_size = batch_size
        self.examples = steps * batch_size  # what each round trains on
        self.trainer = Trainer(
            LeNet(rngs=nnx.Rngs(0)), lr=LR, devices=jax.local_devices()[:devices]
        )

    def warm_up(self) -> float:
        """Compile the calls a round makes (train.py compiles those of an epoch)."""
        images, labels = self.data.train_images, self.data.train_labels
        n = self.examples
        return self.trainer.warm_up(images[:n], labels[:n], self.batch_size)

    def train(self, order) -> tuple[float, float]:
        from lenet_jax.training import COUNT

        images, labels = self.data.train_images, self.data.train_labels
        cpu = time.process_time()
        totals, seconds = self.trainer.train_epoch(
            images, labels, order, self.batch_size
        )
        return float(totals[COUNT]) / seconds, time.process_time() - cpu

    def evaluate(self) -> float:
        start = time.perf_counter()
        self.trainer.evaluate(self.data.test_images, self.data.test_labels)
        return len(self.data.test_images) / (time.perf_counter() - start)


class Book:
    """PyTorch's side: the book's loop from the parity suite's reference."""

    def __init__(self, data, batch_size: int):
        import torch

        from parity.reference import seeded_book_lenet
        from parity.reference_training import to_torch

        self.batch_size = batch_size
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.net = seeded_book_lenet(0).to(self.device)
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=LR)
        x, y = to_torch(data.train_images, data.train_labels)
        self.x, self.y = x.to(self.device), y.to(self.device)
        x, y = to_torch(data.test_images, data.test_labels)
        self.x_test, self.y_test = x.to(self.device), y.to(self.device)

    def _epoch(self, order) -> None:
        from parity.reference_training import batches_of, sgd_epoch

        batches = batches_of(order, self.batch_size)
        sgd_epoch(self.net, self.optimizer, self.x, self.y, batches)
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()

    def warm_up(self, order) -> float:
        start = time.perf_counter()
        self._epoch(order[: self.batch_size])
        return time.perf_counter() - start

    def train(self, order) -> tuple[float, float]:
        cpu = time.process_time()
        start = time.perf_counter()
        self._epoch(order)
        return len(order) / (time.perf_counter() - start), time.process_time() - cpu

    def evaluate(self) -> float:
        from parity.reference_training import accuracy

        start = time.perf_counter()
        accuracy(self.net, self.x_test, self.y_test)
        return len(self.x_test) / (time.perf_counter() - start)


def measure(data, batch_size: int, args) -> dict:
    """Interleaved rounds at one batch size: {"ours": ..., "pytorch": ...}."""
    import numpy as np

    n = len(data.train_images)
    steps = min(args.steps, n // batch_size)
    ours, book = Ours(data, batch_size, args.devices, steps), Book(data, batch_size)
    sides = {"ours": Side(), "pytorch": Side()}
    sides["ours"].first_step_seconds = ours.warm_up()
    sides["pytorch"].first_step_seconds = book.warm_up(np.arange(n))
    runners = {"ours": ours, "pytorch": book}
    rng = np.random.default_rng(0)
    for r in range(args.rounds + 1):  # round 0 warms caches and is not recorded
        order = rng.permutation(n)[: steps * batch_size]
        names = ["ours", "pytorch"] if r % 2 == 0 else ["pytorch", "ours"]
        for name in names:
            rate, cpu = runners[name].train(order)
            eval_rate = None if args.no_eval else runners[name].evaluate()
            side = sides[name]
            if r == 0:
                side.peak_rss_mib = peak_rss_mib()
                continue
            side.train_examples_per_sec.append(rate)
            side.train_cpu_seconds.append(cpu)
            if eval_rate is not None:
                side.eval_examples_per_sec.append(eval_rate)
    result = {name: side.summary() for name, side in sides.items()}
    result["steps_per_round"] = steps
    result["train_ratio"] = (
        result["ours"]["train_examples_per_sec_median"]
        / result["pytorch"]["train_examples_per_sec_median"]
    )
    if not args.no_eval:
        result["eval_ratio"] = (
            result["ours"]["eval_examples_per_sec_median"]
            / result["pytorch"]["eval_examples_per_sec_median"]
        )
    cpu = {k: statistics.median(v.train_cpu_seconds) for k, v in sides.items()}
    result["train_ratio_per_cpu_second"] = cpu["pytorch"] / cpu["ours"]
    return result


def _range(values: list[float]) -> str:
    return f"{min(values):,.0f}-{max(values):,.0f}"


def format_table(report: dict) -> str:
    """The human-readable table of a report made by `run`."""
    lines = [
        f"device: {report['device']}; torch {report['torch']} on "
        f"{report['torch_device']} with {report['torch_threads']} threads; "
        f"load average {report['load_before'][0]:.1f} -> {report['load_after'][0]:.1f}",
        f"matmul peak (2048^3 f32, JAX): {report['matmul_gflops']:.0f} GFLOP/s; "
        f"a training example is {FLOPS_PER_EXAMPLE / 1e6:.2f} MFLOP",
        f"our conv blocks: {report['conv_blocks']}",
        "",
        f"{'batch':>5} {'side':<8} {'train ex/s (median, range)':>30} "
        f"{'ratio':>6} {'% peak':>7} {'eval ex/s':>10} {'first step':>10} "
        f"{'peak RSS':>9}",
    ]
    for batch, result in report["batches"].items():
        for name in ("ours", "pytorch"):
            side = result[name]
            rates = side["train_examples_per_sec"]
            median = side["train_examples_per_sec_median"]
            peak = 100 * median * FLOPS_PER_EXAMPLE / (report["matmul_gflops"] * 1e9)
            ratio = f"{result['train_ratio']:.2f}x" if name == "ours" else ""
            evals = side.get("eval_examples_per_sec_median")
            lines.append(
                f"{batch:>5} {name:<8} {median:>12,.0f} ({_range(rates):>15}) "
                f"{ratio:>6} {peak:>6.1f}% "
                f"{(f'{evals:,.0f}' if evals else '-'):>10} "
                f"{side['first_step_seconds']:>9.2f}s {side['peak_rss_mib']:>6.0f}MiB"
            )
    lines.append("")
    lines.append(
        "ratio = ours / PyTorch (medians); first step = compilation for ours; peak "
        "RSS is the whole process's, after that side's first round"
    )
    return "\n".join(lines)


def run(args) -> dict:
    """Measure every batch size; returns the report (what --json prints)."""
    import jax
    import torch

    from lenet_jax import native
    from lenet_jax.data import load_fashion_mnist

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    if args.devices > 1 and len(jax.local_devices()) < args.devices:
        raise SystemExit(f"--devices {args.devices}: only {jax.local_devices()}")
    data = load_fashion_mnist()
    report = {
        "command": " ".join(["python -m lenet_jax.bench", *sys.argv[1:]]),
        "device": f"{args.devices} x {jax.local_devices()[0].device_kind}",
        "backend": jax.default_backend(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_device": "cuda" if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "load_before": os.getloadavg(),
        "matmul_gflops": matmul_gflops(),
        "flops_per_example": FLOPS_PER_EXAMPLE,
        "batches": {},
    }
    switch = native.disabled() if args.conv_path == "xla-ops" else nullcontext()
    with switch:
        report["conv_blocks"] = native.describe()
        for batch_size in args.batch_sizes:
            report["batches"][batch_size] = measure(data, batch_size, args)
    report["load_after"] = os.getloadavg()
    return report


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if any(b < 1 for b in args.batch_sizes) or args.rounds < 1 or args.steps < 1:
        raise SystemExit("--batch-sizes, --rounds and --steps must be positive")
    xla_flags.reexec_with_tuned_env(["-m", "lenet_jax.bench", *argv], args.devices)
    import logging

    logging.getLogger("absl").setLevel(logging.ERROR)
    report = run(args)
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
