"""Training: SGD steps from the same weights, and whole runs of the book's 10 epochs.

Our side is `lenet_jax.training.Trainer`, exactly as `train.py` drives it; the
reference is `parity.reference_training`. Where both must see the same batches, the
order comes from our `epoch_permutation` and is cut by our `batch_plan`; the
reference takes each batch's indices with the padded (mask 0) rows dropped.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import multiprocessing
import time

import numpy as np
import torch
from flax import nnx

from lenet_jax import training
from lenet_jax.model import LeNet
from lenet_jax.training import Trainer, batch_plan, epoch_permutation
from parity.convert import lenet_from_torch, params_from_torch
from parity.dataset import fashion_mnist
from parity.paths import conv_path, current_path
from parity.reference import seeded_book_lenet
from parity.reference_training import EpochRecord, sgd_epoch, to_torch, train_book
from parity.rows import Row, compare, within

log = logging.getLogger(__name__)

LR = 0.9
BATCH_SIZE = 256
EPOCHS = 10
PARAM_TOL = 1e-4
LOSS_TOL = 1e-4
SAME_WEIGHTS_ACC_TOL = 0.01
SEED_MEAN_ACC_TOL = 0.03


def plan_batches(order: np.ndarray, batch_size: int = BATCH_SIZE) -> list[np.ndarray]:
    """Our batch plan for an order, as index lists with the padded rows dropped."""
    indices, mask = batch_plan(order, batch_size)
    return [idx[m > 0] for idx, m in zip(indices, mask, strict=True)]


def epoch_loss_and_acc(result) -> tuple[float, float]:
    """(mean loss, accuracy) from what `Trainer.train_epoch` returns.

    Takes both of its forms: (mean loss, accuracy, seconds), or (totals, seconds)
    with totals indexed by training.LOSS_SUM, CORRECT and COUNT.
    """
    if len(result) == 3:
        loss, acc, _ = result
        return float(loss), float(acc)
    totals, _ = result
    count = totals[training.COUNT]
    return (
        float(totals[training.LOSS_SUM] / count),
        float(totals[training.CORRECT] / count),
    )


def _params(model: nnx.Module) -> dict:
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


# --------------------------------------------------------------------------------------
# SGD steps from the same weights
# --------------------------------------------------------------------------------------


def compare_sgd_steps(
    steps: int,
    seed: int = 0,
    num_examples: int | None = None,
    path: str | None = None,
) -> list[Row]:
    """`steps` SGD steps of both on the same batches; every parameter after them.

    Args:
      steps: how many batches of 256 to train on.
      seed: picks the initial weights (PyTorch's book init) and the order.
      num_examples: train on this many examples instead of steps * 256: a short
        last batch, padded and masked on our side.
      path: how our model computes its convolution blocks ("native", "xla-ops";
        see parity.paths); None for the default.
    """
    if path is not None:
        with conv_path(path):
            return compare_sgd_steps(steps, seed, num_examples)
    data = fashion_mnist()
    n = num_examples if num_examples is not None else steps * BATCH_SIZE
    order = epoch_permutation(len(data.train_images), seed, 0)[:n]
    net = seeded_book_lenet(seed)
    model = lenet_from_torch(net)

    x, y = to_torch(data.train_images, data.train_labels)
    optimizer = torch.optim.SGD(net.parameters(), lr=LR)
    loss_sum, _, count = sgd_epoch(net, optimizer, x, y, plan_batches(order))
    expected = params_from_torch(net.state_dict())

    trainer = Trainer(model, lr=LR)
    result = trainer.train_epoch(
        data.train_images, data.train_labels, order, BATCH_SIZE
    )
    loss, _ = epoch_loss_and_acc(result)
    ours = _params(trainer.model())

    label = f"[{current_path()}] after {steps} step{'s' if steps > 1 else ''}"
    if num_examples is not None:
        label += f" ({n} examples, last batch {n % BATCH_SIZE or BATCH_SIZE})"
    rows = [compare(f"{label}: mean training loss", loss, loss_sum / count, LOSS_TOL)]
    for name, arrays in expected.items():
        for kind, value in arrays.items():
            rows.append(
                compare(f"{label}: {name}.{kind}", ours[name][kind], value, PARAM_TOL)
            )
    return rows


# --------------------------------------------------------------------------------------
# Whole runs
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    """One training run: which framework, its seed, one record per epoch.

    `conv_path` is how our model computed its conv blocks (see parity.paths); empty
    for PyTorch.
    """

    framework: str
    seed: int
    records: list[EpochRecord]
    conv_path: str = ""

    @property
    def final_test_acc(self) -> float:
        return self.records[-1].test_acc


def train_ours(
    model: LeNet, epochs: int, seed: int, label: str = "jax"
) -> list[EpochRecord]:
    """Train our model with our Trainer, the order from `epoch_permutation(seed)`."""
    data = fashion_mnist()
    trainer = Trainer(model, lr=LR)
    trainer.warm_up(data.train_images, data.train_labels, BATCH_SIZE)
    records = []
    for epoch in range(epochs):
        order = epoch_permutation(len(data.train_images), seed, epoch)
        start = time.perf_counter()
        result = trainer.train_epoch(
            data.train_images, data.train_labels, order, BATCH_SIZE
        )
        seconds = time.perf_counter() - start
        loss, acc = epoch_loss_and_acc(result)
        test_acc = trainer.evaluate(data.test_images, data.test_labels)
        records.append(EpochRecord(epoch + 1, loss, acc, test_acc, seconds))
        log.info(
            "%s epoch %d: loss %.3f, train acc %.3f, test acc %.3f, %.1f s",
            label,
            epoch + 1,
            loss,
            acc,
            test_acc,
            seconds,
        )
    return records


def same_weights_runs(epochs: int = EPOCHS, seed: int = 0) -> tuple[Run, Run]:
    """Both trained from PyTorch's book init of `seed`, on our batch order.

    Returns (PyTorch's run, ours).
    """
    torch_run, our_run = execute_all(
        [RunTask("pytorch", seed, epochs, True), RunTask("jax", seed, epochs, True)]
    )
    return torch_run, our_run


def compare_same_weights(torch_run: Run, our_run: Run) -> list[Row]:
    """Final test accuracies of the same-weights runs within 0.01."""
    epochs = len(our_run.records)
    diff = our_run.final_test_acc - torch_run.final_test_acc
    return [
        within(
            f"[{our_run.conv_path}] same weights and batches: test accuracy after "
            f"{epochs} epochs "
            f"(ours {our_run.final_test_acc:.4f}, PyTorch "
            f"{torch_run.final_test_acc:.4f})",
            diff,
            SAME_WEIGHTS_ACC_TOL,
        )
    ]


def seed_tasks(seeds: tuple[int, ...], epochs: int = EPOCHS) -> list[RunTask]:
    """Independent runs, a PyTorch and a JAX one per seed."""
    return [
        RunTask(framework, seed, epochs, False)
        for seed in seeds
        for framework in ("pytorch", "jax")
    ]


def seed_runs(seeds: tuple[int, ...], epochs: int = EPOCHS, jobs: int = 1) -> list[Run]:
    """Independent runs: each framework draws its own init and shuffle per seed."""
    return execute_all(seed_tasks(seeds, epochs), jobs)


# --------------------------------------------------------------------------------------
# Running training tasks, in this process or in worker processes
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunTask:
    """One training run to do.

    With `same_weights`, both frameworks start from PyTorch's book init of `seed`
    and PyTorch trains on our batch plan. Without, each side draws its own: ours
    `LeNet(rngs=nnx.Rngs(seed))`, PyTorch the book init after
    `torch.manual_seed(seed)` and its own `torch.randperm` shuffle. Our order is
    `epoch_permutation(N, seed, epoch)` either way.
    """

    framework: str
    seed: int
    epochs: int
    same_weights: bool


def execute(task: RunTask) -> Run:
    """Do one training run in this process."""
    data = fashion_mnist()
    kind = "same-weights" if task.same_weights else "independent"
    log.info("%s run, %s, seed %d", kind, task.framework, task.seed)
    if task.framework == "jax":
        if task.same_weights:
            model = lenet_from_torch(seeded_book_lenet(task.seed))
        else:
            model = LeNet(rngs=nnx.Rngs(task.seed))
        records = train_ours(model, task.epochs, task.seed)
        return Run("jax", task.seed, records, current_path())

    n = len(data.train_images)
    batches = None
    if task.same_weights:

        def batches(epoch: int) -> list[np.ndarray]:
            return plan_batches(epoch_permutation(n, task.seed, epoch))

    records = train_book(
        seeded_book_lenet(task.seed),
        (data.train_images, data.train_labels),
        (data.test_images, data.test_labels),
        num_epochs=task.epochs,
        lr=LR,
        batch_size=BATCH_SIZE,
        batches=batches,
        seed=task.seed,
    )
    return Run("pytorch", task.seed, records)


def _worker_init(log_level: int, torch_threads: int) -> None:
    logging.basicConfig(
        level=log_level,
        format="%(asctime)s %(name)s [worker]: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("absl", "jax", "tensorflow_datasets"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    torch.set_num_threads(torch_threads)


def execute_all(tasks: list[RunTask], jobs: int = 1) -> list[Run]:
    """Do the runs, `jobs` at a time in fresh processes (or here, for 1 job).

    Every run is deterministic and independent of the others, so running them in
    parallel changes only the wall time. Returns the runs in the order of tasks.
    """
    if jobs <= 1 or len(tasks) <= 1:
        return [execute(task) for task in tasks]
    # Longest first (our epochs are the slower ones on CPU), to finish together.
    order = sorted(range(len(tasks)), key=lambda i: tasks[i].framework != "jax")
    context = multiprocessing.get_context("spawn")
    level = logging.getLogger("parity").getEffectiveLevel()
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=context,
        initializer=_worker_init,
        initargs=(level, torch.get_num_threads()),
    ) as pool:
        futures = {i: pool.submit(execute, tasks[i]) for i in order}
        return [futures[i].result() for i in range(len(tasks))]


def seed_statistics(runs: list[Run], framework: str) -> dict[str, float]:
    """Mean, min, max and standard deviation of one framework's final accuracies."""
    accs = np.array([r.final_test_acc for r in runs if r.framework == framework])
    return {
        "runs": len(accs),
        "mean": float(accs.mean()),
        "min": float(accs.min()),
        "max": float(accs.max()),
        "std": float(accs.std(ddof=1)) if len(accs) > 1 else 0.0,
    }


def compare_seed_runs(runs: list[Run]) -> list[Row]:
    """Mean final test accuracy over independent seeds within 0.03."""
    ours, theirs = seed_statistics(runs, "jax"), seed_statistics(runs, "pytorch")
    paths = "/".join(sorted({r.conv_path for r in runs if r.framework == "jax"}))
    return [
        within(
            f"[{paths}] independent seeds ({ours['runs']} each): mean final test "
            "accuracy "
            f"(ours {ours['mean']:.4f}, PyTorch {theirs['mean']:.4f})",
            ours["mean"] - theirs["mean"],
            SEED_MEAN_ACC_TOL,
        )
    ]
