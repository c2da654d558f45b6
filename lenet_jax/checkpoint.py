"""Checkpoints: a LeNet's parameters, optimizer state and run metadata in one file.

A checkpoint is a NumPy `.npz` archive: one array per parameter, named by its path
in the model (`params/conv1/kernel`), the optimizer state's leaves (`opt/0`, ...)
and a JSON document (`meta`) with the model's options, the epoch and the metrics.

It is written to a temporary file in the same directory and renamed over the old
one (`os.replace` is atomic on POSIX), so a crash at any moment, during the write
included, leaves the previous checkpoint whole.

Why not orbax-checkpoint: for 62k parameters in one process, a single file renamed
into place gives the same atomicity with no background threads, no directory of
shards and no version skew between the writer and a reader that only has numpy.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from lenet_jax.model import LeNet

FORMAT = "lenet-jax-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or not one of ours."""


def _flatten(tree: dict, prefix: str) -> dict[str, np.ndarray]:
    """{'a': {'b': x}} -> {'prefix/a/b': x}, as numpy arrays."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name))
        else:
            flat[name] = np.asarray(value)
    return flat


def _unflatten(flat: dict[str, np.ndarray], prefix: str) -> dict:
    """The inverse of `_flatten` for the keys under prefix."""
    tree: dict = {}
    for name, value in flat.items():
        if not name.startswith(prefix + "/"):
            continue
        *parents, leaf = name[len(prefix) + 1 :].split("/")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def save_checkpoint(
    path: str | Path,
    model: nnx.Module,
    opt_state: Any = None,
    meta: dict | None = None,
) -> Path:
    """Write model parameters, optimizer state and metadata atomically to path.

    `meta` must be JSON-serialisable; the model's `activation` and `pool` options
    are added to it so that `load_model` can rebuild the network.
    """
    path = Path(path)
    arrays = _flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param)), "params")
    for i, leaf in enumerate(jax.tree.leaves(opt_state)):
        arrays[f"opt/{i}"] = np.asarray(leaf)
    document = {
        "format": FORMAT,
        "model": {"activation": model.activation, "pool": model.pool},
        **(meta or {}),
    }
    arrays["meta"] = np.frombuffer(json.dumps(document).encode(), dtype=np.uint8)

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a checkpoint is not
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path) -> tuple[dict, list[np.ndarray], dict]:
    """Read a checkpoint: (parameters as a nested dict, optimizer leaves, meta)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        with np.load(path, allow_pickle=False) as archive:
            flat = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        # numpy's own message for a non-archive talks of pickles; ours says what
        # the file should have been.
        raise CheckpointError(
            f"{path}: not a readable checkpoint (a .npz archive was expected; "
            f"{type(e).__name__})"
        ) from e
    if "meta" not in flat:
        raise CheckpointError(f"{path}: no 'meta' record; not a lenet-jax checkpoint")
    try:
        meta = json.load(io.BytesIO(flat.pop("meta").tobytes()))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: its 'meta' record is not JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(
            f"{path}: format {found!r}, expected {FORMAT!r}; not a lenet-jax checkpoint"
        )
    opt_names = [n for n in flat if n.startswith("opt/")]
    if not all(n[4:].isdigit() for n in opt_names):
        raise CheckpointError(f"{path}: optimizer records {opt_names} are not numbered")
    opt_names.sort(key=lambda n: int(n[4:]))
    return _unflatten(flat, "params"), [flat[n] for n in opt_names], meta


def load_model(path: str | Path) -> LeNet:
    """A LeNet holding the parameters saved in the checkpoint at path."""
    params, _, meta = load_checkpoint(path)
    try:
        model = LeNet(**meta["model"], rngs=nnx.Rngs(0))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: no usable model options ({e!r})") from e
    state = nnx.state(model, nnx.Param)
    expected = _flatten(nnx.to_pure_dict(state), "params")
    got = _flatten(params, "params")
    if set(got) != set(expected):
        raise CheckpointError(
            f"{path}: parameters {sorted(set(got) ^ set(expected))} are missing or "
            "extra; not a LeNet checkpoint"
        )
    for name, array in expected.items():
        if got[name].shape != array.shape or got[name].dtype != array.dtype:
            raise CheckpointError(
                f"{path}: {name} should be {array.dtype} {array.shape}, found "
                f"{got[name].dtype} {got[name].shape}"
            )
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)
    return model


def restore_opt_state(template: Any, leaves: list[np.ndarray]) -> Any:
    """Put saved optimizer leaves back into the structure of `tx.init(params)`."""
    treedef = jax.tree.structure(template)
    if treedef.num_leaves != len(leaves):
        raise CheckpointError(
            f"optimizer state has {len(leaves)} arrays, expected {treedef.num_leaves}"
        )
    return jax.tree.unflatten(treedef, leaves)
