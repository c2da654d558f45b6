"""Fashion-MNIST through tensorflow-datasets, from the original IDX files.

Two sources, never a synthetic stand-in:

- A local directory holding the four original gzip'd IDX files. Debian's package
  `dataset-fashion-mnist` installs them in /usr/share/datasets/fashion-mnist/, which
  is looked at by default; `--data-dir` names another. The files are turned into a
  TFDS dataset by `FashionMnistLocal`, a TFDS builder, prepared once and cached.
  Debian recompressed the files, so their bytes differ from the downloads whose
  checksums TFDS registered for its own `fashion_mnist`; the decoded images do not.
- TFDS's standard `fashion_mnist`, downloaded from the original hosts, where no local
  files exist and a network reaches those hosts.

The builder stores the images as raw uint8 tensors in array_record files, so reading
and preparing need no TensorFlow. Each distinct set of source files gets its own
cached dataset (the builder config is named after a hash of the files' bytes).
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import logging
import os
import shutil
import zlib
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
# The book's `get_fashion_mnist_labels`, in label order 0..9.
CLASS_NAMES = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
IMAGE_SHAPE = (28, 28)
SPLIT_SIZES = {"train": 60_000, "test": 10_000}
# IDX magic numbers: two zero bytes, the type code 0x08 (unsigned byte), the rank.
IDX_MAGIC = {1: 0x00000801, 3: 0x00000803}


class DataError(ValueError):
    """A data file or directory is missing or malformed; the message names it."""


@dataclasses.dataclass(frozen=True)
class FashionMnist:
    """Fashion-MNIST in memory.

    Images are float32 in [0, 1] with shape (N, 28, 28, 1); labels are int32 (N,).
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]
    source: str


# --------------------------------------------------------------------------------------
# Reading the original IDX files
# --------------------------------------------------------------------------------------


def read_idx(path: Path, rank: int) -> np.ndarray:
    """Decode one gzip'd IDX file of unsigned bytes into an array of the given rank.

    Raises DataError naming the file for every way it can be wrong: missing,
    unreadable, empty, not gzip, truncated, wrong magic number, wrong length.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except PermissionError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror})") from e
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: not a complete gzip file ({e})") from e
    header_len = 4 + 4 * rank
    if len(raw) < header_len:
        raise DataError(f"{path}: {len(raw)} bytes is too short for an IDX header")
    magic = int.from_bytes(raw[:4], "big")
    if magic != IDX_MAGIC[rank]:
        raise DataError(
            f"{path}: IDX magic number is {magic:#010x}, expected "
            f"{IDX_MAGIC[rank]:#010x} (unsigned bytes, {rank} dimensions)"
        )
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank)]
    expected = int(np.prod(dims))
    body = raw[header_len:]
    if len(body) != expected:
        raise DataError(
            f"{path}: header says {dims} ({expected} bytes) but holds {len(body)} bytes"
        )
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def read_split(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, 28, 28) and uint8 labels (N,) of 'train' or 'test'."""
    directory = Path(directory)
    images_path = directory / FILES[f"{split}_images"]
    labels_path = directory / FILES[f"{split}_labels"]
    images = read_idx(images_path, rank=3)
    labels = read_idx(labels_path, rank=1)
    if images.shape[1:] != IMAGE_SHAPE:
        raise DataError(
            f"{images_path}: images are {images.shape[1:]}, expected {IMAGE_SHAPE}"
        )
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} holds {len(images)} images but {labels_path} holds "
            f"{len(labels)} labels"
        )
    if len(images) != SPLIT_SIZES[split]:
        raise DataError(
            f"{images_path}: {len(images)} examples, Fashion-MNIST's {split} split "
            f"has {SPLIT_SIZES[split]}"
        )
    if labels.max(initial=0) >= len(CLASS_NAMES):
        raise DataError(f"{labels_path}: label {labels.max()} is not a class 0..9")
    return images, labels


def missing_files(directory: Path) -> list[str]:
    """Names of the four Fashion-MNIST files not present in directory."""
    return [name for name in FILES.values() if not (Path(directory) / name).is_file()]


def fingerprint(directory: Path) -> str:
    """A short hash of the four files' bytes: which cached dataset they map to."""
    digest = hashlib.sha256()
    for name in FILES.values():
        digest.update((Path(directory) / name).read_bytes())
    return digest.hexdigest()[:12]


# --------------------------------------------------------------------------------------
# The TFDS builder
# --------------------------------------------------------------------------------------


@functools.cache
def _builder_class():
    """Define the TFDS builder on first use: importing TFDS costs about a second."""
    import tensorflow_datasets as tfds

    class FashionMnistLocal(tfds.core.GeneratorBasedBuilder):
        """Fashion-MNIST prepared from a directory of the original IDX files.

        The directory is TFDS's manual_dir. Images are stored as raw uint8 tensors
        (N, 28, 28, 1), which need no TensorFlow to encode or decode.
        """

        VERSION = tfds.core.Version("1.0.0")
        BUILDER_CONFIGS = []  # one config per source fingerprint, made at run time
        MANUAL_DOWNLOAD_INSTRUCTIONS = (
            "Put the four gzip'd IDX files of Fashion-MNIST in one directory "
            f"({', '.join(FILES.values())}); Debian's dataset-fashion-mnist "
            f"installs them in {DEBIAN_DIR}."
        )

        def _info(self):
            features = tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(names=list(CLASS_NAMES)),
                }
            )
            return tfds.core.DatasetInfo(
                builder=self,
                description="Fashion-MNIST from the original IDX files.",
                features=features,
                supervised_keys=("image", "label"),
                homepage="https://github.com/zalandoresearch/fashion-mnist",
            )

        def _split_generators(self, dl_manager):
            directory = Path(dl_manager.manual_dir)
            return {
                "train": self._generate_examples(directory, "train"),
                "test": self._generate_examples(directory, "test"),
            }

        def _generate_examples(self, directory, split):
            images, labels = read_split(directory, split)
            for i, (image, label) in enumerate(zip(images, labels, strict=True)):
                yield i, {"image": image[..., None], "label": int(label)}

    return FashionMnistLocal


def default_tfds_dir() -> Path:
    """Where prepared datasets are cached: $TFDS_DATA_DIR or ~/tensorflow_datasets."""
    return Path(os.environ.get("TFDS_DATA_DIR", Path.home() / "tensorflow_datasets"))


def prepare_local(directory: Path, tfds_dir: Path | None = None):
    """Prepare (once) and return the TFDS builder for the files in directory."""
    import tensorflow_datasets as tfds

    directory = Path(directory)
    missing = missing_files(directory)
    if missing:
        raise DataError(
            f"{directory}: missing Fashion-MNIST file(s) {', '.join(missing)}"
        )
    # Validate every file before TFDS starts, so a bad file is named plainly.
    for split in SPLIT_SIZES:
        read_split(directory, split)
    tfds.display_progress_bar(False)
    cls = _builder_class()
    config = tfds.core.BuilderConfig(name=f"src-{fingerprint(directory)}")
    builder = cls(
        config=config,
        data_dir=str(tfds_dir or default_tfds_dir()),
        file_format="array_record",
    )
    # TFDS writes into an `incomplete.*` folder and renames it when done, so an
    # interrupted run normally leaves nothing a later run would read. A folder
    # without its dataset_info.json (copied or deleted in part) is not prepared:
    # remove it, or TFDS would read its splits as empty.
    target = Path(builder.data_dir)
    if not builder.is_prepared():
        if target.exists():
            log.warning("removing the half-prepared dataset in %s", target)
            shutil.rmtree(target)
        log.info("preparing TFDS dataset from %s into %s", directory, target)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(directory))
    )
    return builder


def _split_arrays(source) -> tuple[np.ndarray, np.ndarray]:
    """All examples of a TFDS data source as (images float32 NHWC, labels int32)."""
    records = source.__getitems__(list(range(len(source))))
    images = np.stack([r["image"] for r in records])
    labels = np.array([r["label"] for r in records], dtype=np.int32)
    return images.astype(np.float32) / 255.0, labels


def read_splits(builder):
    """(train, test) arrays from a prepared builder, checked against the sizes.

    Raises DataError, naming the cache folder, when a split is missing, unreadable
    or of the wrong size (a cache damaged after it was prepared).
    """
    arrays = []
    for split, size in SPLIT_SIZES.items():
        try:
            images, labels = _split_arrays(builder.as_data_source()[split])
        except Exception as e:  # array_record raises several kinds on bad files
            raise DataError(
                f"{builder.data_dir}: the prepared {split} split cannot be read "
                f"({type(e).__name__}: {e})"
            ) from e
        if len(images) != size:
            raise DataError(
                f"{builder.data_dir}: the prepared {split} split holds "
                f"{len(images)} examples, expected {size}"
            )
        arrays.append((images, labels))
    return arrays


def load_fashion_mnist(
    data_dir: str | Path | None = None, tfds_dir: str | Path | None = None
) -> FashionMnist:
    """Load Fashion-MNIST as float32 images (N, 28, 28, 1) in [0, 1], int32 labels.

    Args:
      data_dir: a directory with the four original gzip'd IDX files. None looks in
        Debian's /usr/share/datasets/fashion-mnist, then falls back to TFDS's
        standard `fashion_mnist` download.
      tfds_dir: where TFDS caches prepared datasets (default: $TFDS_DATA_DIR or
        ~/tensorflow_datasets).

    Raises:
      DataError: the files are missing or malformed, or no source could be reached.
    """
    if data_dir is not None:
        builder = prepare_local(Path(data_dir), tfds_dir)
        source = f"local files in {Path(data_dir)} (TFDS cache {builder.data_dir})"
    elif not missing_files(DEBIAN_DIR):
        builder = prepare_local(DEBIAN_DIR, tfds_dir)
        source = f"Debian's files in {DEBIAN_DIR} (TFDS cache {builder.data_dir})"
    else:
        builder = _prepare_download(tfds_dir)
        source = f"TFDS download (cache {builder.data_dir})"
    try:
        splits = read_splits(builder)
    except DataError as e:
        if data_dir is None and missing_files(DEBIAN_DIR):
            raise  # a downloaded dataset: nothing local to rebuild it from
        log.warning("%s; rebuilding it", e)
        shutil.rmtree(builder.data_dir)
        builder = prepare_local(Path(data_dir or DEBIAN_DIR), tfds_dir)
        splits = read_splits(builder)
    (train_images, train_labels), (test_images, test_labels) = splits
    return FashionMnist(
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        class_names=CLASS_NAMES,
        source=source,
    )


def _prepare_download(tfds_dir: Path | None):
    """TFDS's own `fashion_mnist`, downloaded; a clear error where it can't be."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(
            "fashion_mnist",
            data_dir=str(tfds_dir or default_tfds_dir()),
            file_format="array_record",
        )
        builder.download_and_prepare()
    except Exception as e:  # no network, no TensorFlow to encode its PNGs, ...
        raise DataError(
            f"no Fashion-MNIST files in {DEBIAN_DIR} and the TFDS download failed "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "install Debian's dataset-fashion-mnist or pass --data-dir"
        ) from e
    return builder
