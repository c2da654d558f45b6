"""The whole comparison, section by section, as the report and the CLI run it.

Sections follow the issue: (a) pooling, (b) layer shapes, (c) forward and backward,
(d) SGD steps, (e) accuracy, (f) initialisation. `--quick` keeps every section but
shrinks the expensive ones: a subset of the pooling grid, and one epoch of the
same-weights run instead of 10 epochs plus 5 seeds a side.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

from parity import compare_init, compare_model, compare_pooling, compare_training
from parity.compare_training import Run
from parity.paths import available_paths
from parity.pooling_cases import full_grid, quick_grid
from parity.rows import Row

log = logging.getLogger(__name__)

# ReLU with average pooling: not a variant the book or its exercise prints, but the
# native kernels serve it, so its logits and gradients are checked too.
NATIVE_ONLY_VARIANTS = (("relu", "avg"),)


@dataclasses.dataclass
class Section:
    """One part of the report: its rows, and how long it took."""

    key: str
    title: str
    rows: list[Row]
    seconds: float = 0.0
    grouped: bool = False  # tabulate by group (the text before ": " in each case)
    skipped: str = ""  # why a part did not run, if one did not


@dataclasses.dataclass
class Results:
    """Everything the report shows."""

    sections: list[Section]
    same_weights: tuple[Run, Run] | None = None
    seed_runs: list[Run] = dataclasses.field(default_factory=list)
    init_stats: list[dict] = dataclasses.field(default_factory=list)
    options: dict = dataclasses.field(default_factory=dict)

    @property
    def rows(self) -> list[Row]:
        return [row for section in self.sections for row in section.rows]

    @property
    def passed(self) -> bool:
        return all(row.passed for row in self.rows)


@dataclasses.dataclass(frozen=True)
class Plan:
    """How much of each section to run."""

    quick: bool = False
    epochs: int = compare_training.EPOCHS
    seeds: int = 5
    init_draws: int = 200
    jobs: int = 1  # training runs at a time, each in its own process

    @property
    def same_weights_epochs(self) -> int:
        return 1 if self.quick else self.epochs

    @property
    def seed_count(self) -> int:
        return 0 if self.quick else self.seeds


def _timed(fn: Callable, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def pooling_section(quick: bool) -> Section:
    grid = quick_grid() if quick else full_grid()
    log.info("(a) pooling: %d cases", len(grid))
    rows, seconds = _timed(
        lambda: (
            compare_pooling.compare_cases(grid) + compare_pooling.compare_pool2d_loops()
        )
    )
    return Section("a", "Pooling against torch.nn.functional", rows, seconds, True)


def shapes_section() -> Section:
    log.info("(b) layer shapes and parameter counts")

    def run():
        rows = []
        for activation, pool in compare_model.VARIANTS:
            rows += compare_model.compare_layer_shapes(activation, pool)
        return rows + compare_model.compare_param_counts()

    rows, seconds = _timed(run)
    return Section("b", "Layer shapes and parameter counts", rows, seconds)


def forward_backward_section() -> Section:
    log.info("(c) converters, forward and backward")

    def run():
        rows = compare_model.compare_round_trips()
        for activation, pool in compare_model.VARIANTS + NATIVE_ONLY_VARIANTS:
            for path in available_paths(activation, pool):
                rows += compare_model.compare_forward_backward(
                    activation, pool, path=path
                )
        return rows

    rows, seconds = _timed(run)
    return Section("c", "Converters, logits and gradients", rows, seconds)


def steps_section() -> Section:
    log.info("(d) SGD steps from the same weights")

    def run():
        rows = []
        for path in available_paths():
            rows += (
                compare_training.compare_sgd_steps(1, path=path)
                + compare_training.compare_sgd_steps(1, num_examples=100, path=path)
                + compare_training.compare_sgd_steps(100, path=path)
            )
        return rows

    rows, seconds = _timed(run)
    return Section("d", "SGD steps from the same weights", rows, seconds)


def accuracy_section(plan: Plan, results: Results) -> Section:
    epochs = plan.same_weights_epochs
    seeds = tuple(range(plan.seed_count))
    log.info(
        "(e) accuracy: same weights for %d epoch(s), %d independent seeds a side "
        "for %d epochs, %d job(s) at a time",
        epochs,
        len(seeds),
        plan.epochs,
        plan.jobs,
    )
    start = time.perf_counter()
    same = [
        compare_training.RunTask("pytorch", 0, epochs, True),
        compare_training.RunTask("jax", 0, epochs, True),
    ]
    tasks = same + compare_training.seed_tasks(seeds, plan.epochs)
    runs = compare_training.execute_all(tasks, plan.jobs if seeds else 1)
    torch_run, our_run = runs[:2]
    results.same_weights = (torch_run, our_run)
    rows = compare_training.compare_same_weights(torch_run, our_run)
    skipped = ""
    if seeds:
        results.seed_runs = runs[2:]
        rows += compare_training.compare_seed_runs(results.seed_runs)
    else:
        skipped = "independent seeds: not run with --quick"
    seconds = time.perf_counter() - start
    return Section("e", "Accuracy on Fashion-MNIST", rows, seconds, skipped=skipped)


def init_section(plan: Plan, results: Results) -> Section:
    log.info("(f) initialisation: %d draws a side", plan.init_draws)
    (rows, stats), seconds = _timed(compare_init.compare_init, plan.init_draws)
    results.init_stats = stats
    return Section("f", "Initialisation", rows, seconds)


def run_suite(plan: Plan) -> Results:
    """Run every section of the plan, logging as it goes."""
    results = Results(sections=[], options=dataclasses.asdict(plan))
    results.sections.append(pooling_section(plan.quick))
    results.sections.append(shapes_section())
    results.sections.append(forward_backward_section())
    results.sections.append(steps_section())
    results.sections.append(accuracy_section(plan, results))
    results.sections.append(init_section(plan, results))
    for section in results.sections:
        failed = sum(not row.passed for row in section.rows)
        log.info(
            "(%s) %s: %d checks, %d failed, %.1f s",
            section.key,
            section.title,
            len(section.rows),
            failed,
            section.seconds,
        )
    return results
