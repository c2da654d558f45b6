"""The book's training function in plain PyTorch, on in-memory arrays.

The chapter's `train_ch6` trains with SGD (lr 0.9) on the mean cross-entropy of each
batch of 256, keeps the short last batch, and reports after every epoch the mean
training loss, the training accuracy (both from the forward pass that made each
update) and the test accuracy. This module does the same without `d2l` or
torchvision: it reads the arrays our trainer reads, (N, 28, 28, 1) float32 images
and int32 labels, transposed to channels-first. The order of the examples is either
given (to feed both frameworks the same batches) or drawn from its own seeded
shuffle, as a DataLoader with `shuffle=True` draws it.

Unlike `train_ch6`, `train_book` does not initialise the weights: call
`init_book_weights_` (or `seeded_book_lenet`) first, so that the same initial
weights can also be handed to the JAX model.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

EVAL_BATCH = 256


@dataclasses.dataclass(frozen=True)
class EpochRecord:
    """One epoch as the book reports it; `seconds` is the time the steps took."""

    epoch: int
    train_loss: float
    train_acc: float
    test_acc: float
    seconds: float


def to_torch(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, ...]:
    """(N, H, W, C) float32 and (N,) int labels -> (N, C, H, W) float32 and int64."""
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    y = torch.from_numpy(np.asarray(labels).astype(np.int64))
    return x, y


def batches_of(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Cut an order of examples into batches; the last one may be shorter."""
    order = np.asarray(order)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def sgd_epoch(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    batches: Sequence[np.ndarray],
) -> tuple[float, float, int]:
    """SGD steps on x[b], y[b] for each batch b of indices, in order.

    Returns the sums over the examples seen: (loss, correct predictions, count),
    each taken from the forward pass before that batch's update.
    """
    loss_fn = nn.CrossEntropyLoss()
    net.train()
    loss_sum, correct, count = 0.0, 0.0, 0
    for batch in batches:
        index = torch.from_numpy(np.asarray(batch, dtype=np.int64))
        xb, yb = x[index], y[index]

        optimizer.zero_grad()
        logits = net(xb)
        loss = loss_fn(logits, yb)
        loss.backward()
        optimizer.step()

        with torch.no_grad():
            loss_sum += float(loss) * len(yb)
            correct += float((logits.argmax(dim=1) == yb).sum())
            count += len(yb)
    return loss_sum, correct, count


def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of x that net classifies as y, in evaluation batches."""
    net.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(x), EVAL_BATCH):
            logits = net(x[start : start + EVAL_BATCH])
            correct += int(
                (logits.argmax(dim=1) == y[start : start + EVAL_BATCH]).sum()
            )
    return correct / len(x)


def shuffled_orders(num_examples: int, seed: int) -> Callable[[int], np.ndarray]:
    """The reference's own shuffle: one `torch.randperm` per epoch from a seed."""
    generator = torch.Generator().manual_seed(seed)
    drawn: dict[int, np.ndarray] = {}

    def order(epoch: int) -> np.ndarray:
        while len(drawn) <= epoch:
            drawn[len(drawn)] = torch.randperm(
                num_examples, generator=generator
            ).numpy()
        return drawn[epoch]

    return order


def train_book(
    net: nn.Module,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    *,
    num_epochs: int = 10,
    lr: float = 0.9,
    batch_size: int = 256,
    batches: Callable[[int], Sequence[np.ndarray]] | None = None,
    seed: int = 0,
) -> list[EpochRecord]:
    """Train net in place as the book's `train_ch6` does, minus the initialisation.

    Args:
      net: the network, already initialised.
      train, test: (images (N, 28, 28, 1) float32, labels (N,) int), channels-last.
      num_epochs, lr, batch_size: the book's 10, 0.9 and 256 by default.
      batches: `batches(epoch)` gives that epoch's batches of example indices, in
        order (e.g. cut from `lenet_jax.training.batch_plan`, to feed our trainer's
        batches); None shuffles each epoch with `torch.randperm` seeded by `seed`
        and cuts the order into batches of `batch_size`, the last one shorter.

    Returns:
      One EpochRecord per epoch.
    """
    x_train, y_train = to_torch(*train)
    x_test, y_test = to_torch(*test)
    if batches is None:
        orders = shuffled_orders(len(x_train), seed)

        def batches(epoch: int) -> list[np.ndarray]:
            return batches_of(orders(epoch), batch_size)

    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    records = []
    for epoch in range(num_epochs):
        start = time.perf_counter()
        epoch_batches = batches(epoch)
        loss_sum, correct, count = sgd_epoch(
            net, optimizer, x_train, y_train, epoch_batches
        )
        seconds = time.perf_counter() - start
        record = EpochRecord(
            epoch=epoch + 1,
            train_loss=loss_sum / count,
            train_acc=correct / count,
            test_acc=accuracy(net, x_test, y_test),
            seconds=seconds,
        )
        log.info(
            "torch epoch %d: loss %.3f, train acc %.3f, test acc %.3f, %.1f s",
            record.epoch,
            record.train_loss,
            record.train_acc,
            record.test_acc,
            seconds,
        )
        records.append(record)
    return records
