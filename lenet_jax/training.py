"""The book's training loop in optax: SGD on the mean cross-entropy of each batch.

One epoch, as the book runs it:
  1. shuffle the training examples (here from `seed` and the epoch number);
  2. for each batch of `batch_size` (the last one smaller, trained on, not dropped):
     loss, gradient, SGD update, and accumulate loss and accuracy;
  3. evaluate accuracy on the test set.

Every batch is padded to `batch_size` and carries a mask, so one compiled step serves
the partial last batch too; padded rows weigh nothing in the loss, the gradient or
the metrics. The data live on the device; each step gathers its batch there by index.

With one device, `CHUNK_STEPS` steps at a time run inside one compiled call: a
`lax.scan` over the steps' batch indices and masks, with parameters, optimizer state
and totals donated, so the host only queues calls and waits once per epoch. (On the
CPU this is as fast per step as single steps only because the convolutions' backward
passes are written out in `lenet_jax.convolution`; see docs/performance.md.)

With several devices, `jax.pmap` splits each batch across them: every device sums
its examples' losses and divides by the whole batch's count, and the gradients are
summed with `psum`, which is the single-device mean gradient up to float rounding.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from lenet_jax import native

log = logging.getLogger(__name__)

AXIS = "devices"  # the pmap axis name used by the collectives
EVAL_BATCH = 2_000
CHUNK_STEPS = 10  # steps per compiled call; progress is reported after each call


# --------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the training examples in one epoch: the same for a seed."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def batch_plan(order: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut an order of examples into batches: indices and mask, both (steps, B).

    The last batch is padded with index 0 and mask 0 when it is short.
    """
    steps = -(-len(order) // batch_size)
    indices = np.zeros(steps * batch_size, dtype=np.int32)
    mask = np.zeros(steps * batch_size, dtype=np.float32)
    indices[: len(order)] = order
    mask[: len(order)] = 1.0
    return indices.reshape(steps, batch_size), mask.reshape(steps, batch_size)


# --------------------------------------------------------------------------------------
# Loss, step and evaluation
# --------------------------------------------------------------------------------------


def batch_loss_sums(logits, labels, mask):
    """Per-batch sums over real examples: (cross-entropy, correct, count)."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return jnp.sum(losses * mask), jnp.sum(correct * mask), jnp.sum(mask)


# The on-device running totals of an epoch, a float32 vector with these entries:
LOSS_SUM, CORRECT, COUNT, STEPS, FIRST_BAD_STEP = range(5)


def new_totals() -> np.ndarray:
    """Totals before the first step: nothing counted, no bad step (-1) seen."""
    return np.array([0.0, 0.0, 0.0, 0.0, -1.0], np.float32)


def accumulate(totals, sums):
    """Add one step's (loss sum, correct, count); remember the first non-finite loss.

    Steps are numbered from 1 within the epoch.
    """
    loss_sum, correct, count = sums
    step = totals[STEPS] + 1
    bad = ~jnp.isfinite(loss_sum)
    first_bad = jnp.where(
        (totals[FIRST_BAD_STEP] < 0) & bad, step, totals[FIRST_BAD_STEP]
    )
    return jnp.stack(
        [
            totals[LOSS_SUM] + loss_sum,
            totals[CORRECT] + correct,
            totals[COUNT] + count,
            step,
            first_bad,
        ]
    )


def make_train_step(graphdef, tx: optax.GradientTransformation, axis_name=None):
    """The step: gather the batch, loss, gradient, update, accumulate metrics.

    `totals` is the float32 vector of `new_totals` carried across steps on the
    device, so the loop never waits for the host. With `axis_name`, the step
    runs under pmap and combines devices with `psum`.
    """

    def step(params, opt_state, totals, images, labels, indices, mask):
        x, y = images[indices], labels[indices]
        count = jnp.sum(mask)
        if axis_name is not None:
            count = jax.lax.psum(count, axis_name)

        def loss_fn(p):
            logits = nnx.merge(graphdef, p)(x)
            loss_sum, correct, n = batch_loss_sums(logits, y, mask)
            return loss_sum / count, (loss_sum, correct, n)

        grads, sums = jax.grad(loss_fn, has_aux=True)(params)
        if axis_name is not None:
            grads = jax.lax.psum(grads, axis_name)
            sums = jax.lax.psum(sums, axis_name)

        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)

        totals = accumulate(totals, sums)
        return params, opt_state, totals

    return step


def make_train_chunk(step: Callable) -> Callable:
    """`step` scanned over a chunk of batches: indices and mask are (steps, B)."""

    def chunk(params, opt_state, totals, images, labels, indices, mask):
        def body(carry, batch):
            params, opt_state, totals = step(*carry, images, labels, *batch)
            return (params, opt_state, totals), None

        carry, _ = jax.lax.scan(body, (params, opt_state, totals), (indices, mask))
        return carry

    return chunk


@functools.lru_cache(maxsize=8)
def make_eval_fn(graphdef, native_blocks: bool = True) -> Callable:
    """Jitted count of correct predictions over (batches, B) images with a mask.

    One call scans all the batches and sums on the device. Cached per graphdef, so
    evaluating after every epoch compiles once. `native_blocks` (whether
    `lenet_jax.native` serves the model now) is part of the cache key only: a
    function traced for one convolution path is not reused for the other.
    """

    @jax.jit
    def correct(params, images, labels, mask):
        model = nnx.merge(graphdef, params)

        def body(total, batch):
            x, y, m = batch
            hits = (jnp.argmax(model(x), axis=-1) == y) & (m > 0)
            return total + jnp.sum(hits, dtype=jnp.int32), None

        total, _ = jax.lax.scan(body, jnp.zeros((), jnp.int32), (images, labels, mask))
        return total

    return correct


def evaluation_batches(images, labels, batch_size: int):
    """(N, ...) -> (batches, B, ...) images and labels, zero-padded, and the mask."""
    batch_size = min(batch_size, len(images))
    steps = -(-len(images) // batch_size)
    pad = steps * batch_size - len(images)
    mask = jnp.concatenate([jnp.ones(len(images)), jnp.zeros(pad)])
    images = jnp.concatenate(
        [images, jnp.zeros((pad, *images.shape[1:]), images.dtype)]
    )
    labels = jnp.concatenate([labels, jnp.zeros((pad,), labels.dtype)])
    shape = (steps, batch_size)
    return (
        images.reshape(*shape, *images.shape[1:]),
        labels.reshape(shape),
        mask.reshape(shape),
    )


def evaluate_accuracy(graphdef, params, images, labels, batch_size=EVAL_BATCH):
    """Fraction of (images, labels) the model classifies right.

    All batches run in one compiled call; the host waits once, at the end.
    """
    images, labels = jnp.asarray(images), jnp.asarray(labels)
    batches = evaluation_batches(images, labels, batch_size)
    native_blocks = native.unavailable_reason() is None
    total = make_eval_fn(graphdef, native_blocks)(params, *batches)
    return float(total) / len(images)


# --------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------


def replicate(tree, devices):
    """One copy of every leaf on each device, stacked on a new leading axis.

    The layout pmap expects for its arguments, placed once so that no step
    transfers them again.
    """
    mesh = jax.sharding.Mesh(np.array(devices), ("replica",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("replica"))

    def put(x):
        x = np.asarray(x)
        return jax.device_put(np.broadcast_to(x, (len(devices), *x.shape)), sharding)

    return jax.tree.map(put, tree)


class Trainer:
    """Trains a model with SGD on data held on the devices.

    Args:
      model: an NNX module mapping images (N, 28, 28, 1) to logits (N, 10).
      lr: the SGD learning rate.
      devices: the devices to train on; more than one trains data parallel with
        pmap, and the batch size must then be a multiple of their number.
    """

    def __init__(self, model: nnx.Module, lr: float, devices: list | None = None):
        self.devices = list(devices or jax.local_devices()[:1])
        self.graphdef, params = nnx.split(model)
        self.tx = optax.sgd(lr)
        step = make_train_step(self.graphdef, self.tx, self._axis)
        if self.parallel:
            self._step = jax.pmap(
                step, axis_name=AXIS, devices=self.devices, donate_argnums=(0, 1, 2)
            )
            self.params = replicate(params, self.devices)
            self.opt_state = replicate(self.tx.init(params), self.devices)
        else:
            self._chunk = jax.jit(make_train_chunk(step), donate_argnums=(0, 1, 2))
            self.params = jax.device_put(params, self.devices[0])
            self.opt_state = jax.device_put(self.tx.init(params), self.devices[0])
        self._data = {}

    @property
    def _sync_each_step(self) -> bool:
        # Simulated CPU devices share one small thread pool. With many pmap steps
        # queued, a device's all-reduce can wait for a partner whose thread is busy
        # with a later step, and XLA aborts the process after 40 s. Waiting for each
        # step before queueing the next avoids it; real accelerators don't need it.
        return self.parallel and self.devices[0].platform == "cpu"

    @property
    def parallel(self) -> bool:
        return len(self.devices) > 1

    @property
    def _axis(self):
        return AXIS if self.parallel else None

    def host_params(self):
        """The parameters as one copy (from device 0 under pmap)."""
        if self.parallel:
            return self._first_replica(self.params)
        return self.params

    def host_opt_state(self):
        """The optimizer state as one copy (from device 0 under pmap)."""
        if self.parallel:
            return self._first_replica(self.opt_state)
        return self.opt_state

    def _first_replica(self, tree):
        """Device 0's copy of a replicated tree, as a tree on device 0 alone."""
        return jax.tree.map(
            lambda a: jax.device_put(np.asarray(a[0]), self.devices[0]), tree
        )

    def opt_state_template(self):
        """A fresh optimizer state: the structure a saved one is restored into."""
        return self.tx.init(self.host_params())

    def set_opt_state(self, opt_state) -> None:
        """Replace the optimizer state, e.g. with one restored from a checkpoint."""
        if self.parallel:
            self.opt_state = replicate(opt_state, self.devices)
        else:
            self.opt_state = jax.device_put(opt_state, self.devices[0])

    def model(self) -> nnx.Module:
        """A module holding the current parameters."""
        return nnx.merge(self.graphdef, self.host_params())

    def _on_devices(self, name: str, images, labels, replicated: bool = True):
        """Put a dataset on the devices once (replicated under pmap if asked)."""
        key = (name, id(images), id(labels))
        if key not in self._data:
            images, labels = jnp.asarray(images), jnp.asarray(labels)
            if self.parallel and replicated:
                placed = replicate((images, labels), self.devices)
            else:
                placed = jax.device_put((images, labels), self.devices[0])
            self._data = {k: v for k, v in self._data.items() if k[0] != name}
            self._data[key] = placed
        return self._data[key]

    def _shard(self, a: np.ndarray) -> np.ndarray:
        """(steps, B) -> (steps, D, B/D) for pmap; unchanged for one device."""
        if not self.parallel:
            return a
        d = len(self.devices)
        if a.shape[1] % d:
            raise ValueError(
                f"batch_size {a.shape[1]} must be a multiple of the {d} devices"
            )
        return a.reshape(a.shape[0], d, a.shape[1] // d)

    def _new_totals(self):
        """Fresh totals where the steps expect them.

        With one device they are placed on it: the chunk is compiled for committed
        device arrays, which is what each call returns, and a host array in the
        first call would compile it a second time, inside the first timed epoch.
        """
        totals = new_totals()
        if self.parallel:
            return np.tile(totals, (len(self.devices), 1))
        return jax.device_put(totals, self.devices[0])

    def train_epoch(self, images, labels, order, batch_size, progress=None):
        """One pass over `images[order]` in batches of `batch_size`.

        Args:
          images, labels: the training set, (N, 28, 28, 1) float32 and (N,) int32.
          order: the order of the examples, e.g. `epoch_permutation(N, seed, epoch)`.
          batch_size: examples per SGD step.
          progress: optional `progress(step, steps, totals)`, called after every
            CHUNK_STEPS steps and after the last, with the running totals fetched
            from the device (a host sync, so only pass it when someone watches).

        Returns:
          The epoch's totals as a host vector indexed by LOSS_SUM, CORRECT, COUNT,
          STEPS, FIRST_BAD_STEP, and the seconds the steps took.
        """
        images_d, labels_d = self._on_devices("train", images, labels)
        indices, mask = batch_plan(order, batch_size)
        totals = self._new_totals()
        start = time.perf_counter()
        if self.parallel:
            totals = self._pmap_steps(
                images_d, labels_d, indices, mask, totals, progress
            )
        else:
            totals = self._scan_steps(
                images_d, labels_d, indices, mask, totals, progress
            )
        totals = self._host_totals(jax.block_until_ready(totals))
        return totals, time.perf_counter() - start

    def _scan_steps(self, images_d, labels_d, indices, mask, totals, progress):
        """One device: a compiled call per CHUNK_STEPS steps, queued without waiting."""
        steps = len(indices)
        for first in range(0, steps, CHUNK_STEPS):
            last = min(first + CHUNK_STEPS, steps)
            self.params, self.opt_state, totals = self._chunk(
                self.params,
                self.opt_state,
                totals,
                images_d,
                labels_d,
                indices[first:last],
                mask[first:last],
            )
            if progress is not None:
                progress(last, steps, self._host_totals(totals))
        return totals

    def _pmap_steps(self, images_d, labels_d, indices, mask, totals, progress):
        """Several devices: one pmap call per step."""
        indices, mask = self._shard(indices), self._shard(mask)
        steps = len(indices)
        for k in range(steps):
            self.params, self.opt_state, totals = self._step(
                self.params,
                self.opt_state,
                totals,
                images_d,
                labels_d,
                indices[k],
                mask[k],
            )
            if self._sync_each_step:
                jax.block_until_ready(totals)
            last = k == steps - 1
            if progress is not None and ((k + 1) % CHUNK_STEPS == 0 or last):
                progress(k + 1, steps, self._host_totals(totals))
        return totals

    def _host_totals(self, totals) -> np.ndarray:
        totals = np.asarray(totals)
        return totals[0] if self.parallel else totals

    def evaluate(self, images, labels) -> float:
        """Accuracy on a dataset, e.g. the test set (kept on the device)."""
        images_d, labels_d = self._on_devices("eval", images, labels, replicated=False)
        return evaluate_accuracy(self.graphdef, self.host_params(), images_d, labels_d)

    def warm_up(self, images, labels, batch_size) -> float:
        """Compile the epoch's calls on copies of the state, so epochs time training.

        Runs each distinct compiled call an epoch of `len(images)` examples in
        batches of `batch_size` will make (under pmap, one step; else a chunk of
        CHUNK_STEPS steps and the shorter last chunk) and throws the copies'
        updates away. Returns the seconds spent, compilation included.
        """
        images_d, labels_d = self._on_devices("train", images, labels)
        steps = -(-len(images) // batch_size)
        lengths = {min(CHUNK_STEPS, steps), steps % CHUNK_STEPS} - {0}
        if self.parallel:
            lengths = {1}
        totals = self._new_totals()
        params = jax.tree.map(jnp.copy, self.params)
        opt_state = jax.tree.map(jnp.copy, self.opt_state)
        start = time.perf_counter()
        for length in sorted(lengths):
            indices, mask = batch_plan(np.arange(length * batch_size), batch_size)
            if self.parallel:
                call = self._step
                indices, mask = self._shard(indices)[0], self._shard(mask)[0]
            else:
                call = self._chunk
            params, opt_state, totals = call(
                params, opt_state, totals, images_d, labels_d, indices, mask
            )
            jax.block_until_ready(totals)
        return time.perf_counter() - start
