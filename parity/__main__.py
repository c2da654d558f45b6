"""`python -m parity`: compare lenet-jax with the book's PyTorch LeNet, write a report.

    python -m parity                       # everything: ~17 CPU-minutes, 2 cores
    python -m parity --quick               # the reduced set for CI, a few minutes
    python -m parity --output-dir runs/p   # report.md and curves.png go there

Exit code 0 when every check passes, 1 when any fails, 2 for a bad option.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import shlex
import sys
import time
from pathlib import Path

log = logging.getLogger("parity")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m parity",
        description="Check that lenet-jax computes what the book's PyTorch LeNet "
        "computes, and write a Markdown report.",
    )
    p.add_argument(
        "--output-dir",
        type=Path,
        default=Path("parity-report"),
        help="where report.md and curves.png go (default: parity-report)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="the reduced set for CI: part of the pooling grid, one epoch "
        "of the same-weights run, no seed runs",
    )
    p.add_argument(
        "--epochs",
        type=positive_int,
        default=10,
        help="epochs of the full training runs (default: the book's 10)",
    )
    p.add_argument(
        "--seeds",
        type=positive_int,
        default=5,
        help="independent seeds a side in the full run (default: 5)",
    )
    p.add_argument(
        "--init-draws",
        type=positive_int,
        default=200,
        help="networks drawn a side to compare initialisation",
    )
    p.add_argument(
        "--torch-threads",
        type=positive_int,
        default=1,
        help="PyTorch's intra-op threads (default 1: LeNet's small "
        "layers run faster on one thread than on two busy cores)",
    )
    p.add_argument(
        "--jobs",
        type=positive_int,
        default=min(2, os.cpu_count() or 1),
        help="training runs at a time in the full run, each in its own "
        "process (default: 2, or 1 on a single CPU)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    return p


def setup_logging(quiet: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("absl", "jax", "tensorflow_datasets"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def environment(args, seconds: float) -> dict[str, str]:
    import flax
    import jax
    import numpy
    import torch

    from parity.dataset import fashion_mnist

    return {
        "command": "python -m parity " + shlex.join(sys.argv[1:]),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "wall time": f"{seconds:.0f} s",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"JAX on {jax.devices()[0].platform}, PyTorch with "
        f"{torch.get_num_threads()} thread(s)",
        "versions": f"jax {jax.__version__}, flax {flax.__version__}, "
        f"torch {torch.__version__}, numpy {numpy.__version__}",
        "data": fashion_mnist().source,
    }


def print_summary(results, report_path: Path, seconds: float) -> None:
    from parity.report import summary

    rows = summary(results)
    width = max(len(name) for name, *_ in rows)
    print(f"\n{'section':<{width}}  checks  failed  worst diff/tol")
    for name, checks, failed, worst in rows:
        print(f"{name:<{width}}  {checks:>6}  {failed:>6}  {worst:>14}")
    if results.same_weights:
        t, o = results.same_weights
        print(
            f"\nsame weights, {len(o.records)} epoch(s): test acc PyTorch "
            f"{t.final_test_acc:.4f}, ours {o.final_test_acc:.4f}"
        )
    if results.seed_runs:
        from parity.compare_training import seed_statistics

        for framework in ("pytorch", "jax"):
            s = seed_statistics(results.seed_runs, framework)
            print(
                f"{framework:>7} over {s['runs']} seeds: mean {s['mean']:.4f}, "
                f"min {s['min']:.4f}, max {s['max']:.4f}, std {s['std']:.4f}"
            )
    failed = sum(not r.passed for r in results.rows)
    verdict = "PASS" if failed == 0 else f"FAIL ({failed} checks)"
    print(f"\n{verdict} in {seconds:.0f} s; report: {report_path}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.quiet)
    start = time.perf_counter()

    import torch

    torch.set_num_threads(args.torch_threads)

    from parity.report import write_report
    from parity.suite import Plan, run_suite

    plan = Plan(
        quick=args.quick,
        epochs=args.epochs,
        seeds=args.seeds,
        init_draws=args.init_draws,
        jobs=args.jobs,
    )
    results = run_suite(plan)
    seconds = time.perf_counter() - start
    report = write_report(results, args.output_dir, environment(args, seconds))
    print_summary(results, report, seconds)
    return 0 if results.passed else 1


if __name__ == "__main__":
    sys.exit(main())
