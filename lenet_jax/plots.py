"""Pictures of a run, written as PNG files with matplotlib's Agg backend."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402


def plot_curves(history: Sequence[dict], path: str | Path, title: str = "") -> Path:
    """The book's training plot: train loss, train acc and test acc by epoch.

    `history` holds one dict per epoch with keys epoch, train_loss, train_acc,
    test_acc.
    """
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=120)
    # Markers, so that a run of one epoch still shows its three points.
    ax.plot(epochs, [h["train_loss"] for h in history], ".-", label="train loss")
    ax.plot(epochs, [h["train_acc"] for h in history], "m.--", label="train acc")
    ax.plot(epochs, [h["test_acc"] for h in history], "g.-.", label="test acc")
    ax.set_xlabel("epoch")
    ax.set_xlim(1, max(epochs[-1], 2))
    ax.grid(True, alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_predictions(
    images: np.ndarray,
    labels: np.ndarray,
    predictions: np.ndarray,
    class_names: Sequence[str],
    path: str | Path,
    columns: int = 8,
) -> Path:
    """A grid of test images titled with true and predicted labels, as in the book.

    images (N, 28, 28, 1) in [0, 1]; labels and predictions (N,) class indices. A
    wrong prediction is titled in red.
    """
    n = len(images)
    rows = -(-n // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.5 * columns, 2.2 * rows))
    for ax, image, true, pred in zip(
        np.ravel(axes), images, labels, predictions, strict=False
    ):
        ax.imshow(image[..., 0], cmap="gray_r")
        color = "black" if true == pred else "red"
        ax.set_title(
            f"{class_names[true]}\n{class_names[pred]}", fontsize=8, color=color
        )
    for ax in np.ravel(axes):
        ax.axis("off")
    fig.suptitle("true label / predicted label", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, classes: int):
    """counts[i, j]: examples of true class i predicted as class j."""
    counts = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(counts, (labels, predictions), 1)
    return counts


def plot_confusion(counts: np.ndarray, class_names: Sequence[str], path) -> Path:
    """The confusion matrix as a heat map with the counts written in each cell."""
    fig, ax = plt.subplots(figsize=(6.4, 5.6), dpi=110)
    ax.imshow(counts, cmap="Blues")
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(ticks, class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = counts.max() / 2
    for (i, j), count in np.ndenumerate(counts):
        color = "white" if count > threshold else "black"
        ax.text(j, i, str(count), ha="center", va="center", fontsize=7, color=color)
    ax.set_title("test set confusion matrix", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
