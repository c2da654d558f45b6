"""The Fashion-MNIST loader on the real files, and its errors on broken ones."""

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest

from lenet_jax import data as fm


def test_real_data_shapes_dtypes_range_and_classes(fashion_mnist):
    d = fashion_mnist
    assert d.train_images.shape == (60_000, 28, 28, 1)
    assert d.test_images.shape == (10_000, 28, 28, 1)
    assert d.train_images.dtype == d.test_images.dtype == np.float32
    assert d.train_labels.dtype == d.test_labels.dtype == np.int32
    for images in (d.train_images, d.test_images):
        assert images.min() == 0.0 and images.max() == 1.0
    np.testing.assert_array_equal(np.bincount(d.train_labels), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(d.test_labels), [1000] * 10)
    assert d.class_names[0] == "t-shirt" and d.class_names[9] == "ankle boot"


def test_tfds_dataset_holds_the_same_images_as_the_idx_files(fashion_mnist):
    """TFDS shuffles on write; as multisets of (image, label) the two are equal."""
    images, labels = fm.read_split(fm.DEBIAN_DIR, "test")

    def keys(imgs, lbls):
        flat = imgs.reshape(len(imgs), -1)
        return sorted(
            row.tobytes() + bytes([lab]) for row, lab in zip(flat, lbls, strict=True)
        )

    ours = np.rint(fashion_mnist.test_images * 255).astype(np.uint8)
    assert keys(ours, fashion_mnist.test_labels) == keys(images, labels)


def test_the_prepared_dataset_is_cached(fashion_mnist, tmp_path):
    builder = fm.prepare_local(fm.DEBIAN_DIR)
    assert builder.is_prepared()
    info = Path(builder.data_path) / "dataset_info.json"
    stamp = info.stat().st_mtime_ns
    fm.prepare_local(fm.DEBIAN_DIR)
    assert info.stat().st_mtime_ns == stamp


@pytest.fixture
def data_copy(tmp_path):
    """A writable copy of the four real files."""
    for name in fm.FILES.values():
        shutil.copy(fm.DEBIAN_DIR / name, tmp_path / name)
    return tmp_path


def _write_gz(path, payload: bytes):
    with gzip.open(path, "wb") as f:
        f.write(payload)


def test_missing_file_is_named(data_copy):
    (data_copy / fm.FILES["test_labels"]).unlink()
    assert fm.missing_files(data_copy) == [fm.FILES["test_labels"]]
    with pytest.raises(fm.DataError, match="t10k-labels-idx1-ubyte.gz: file not found"):
        fm.read_split(data_copy, "test")


@pytest.mark.parametrize(
    "breakage,message",
    [
        ("empty", "not a complete gzip file|too short"),
        ("truncated", "not a complete gzip file"),
        ("random", "not a complete gzip file"),
        ("magic", "magic number is 0x00000802"),
        ("short_body", r"header says \[10000\].*holds 9999 bytes"),
    ],
)
def test_broken_label_file_is_named_with_what_is_wrong(data_copy, breakage, message):
    path = data_copy / fm.FILES["test_labels"]
    raw = gzip.decompress(path.read_bytes())
    if breakage == "empty":
        path.write_bytes(b"")
    elif breakage == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    elif breakage == "random":
        path.write_bytes(np.random.default_rng(0).bytes(5000))
    elif breakage == "magic":
        _write_gz(path, (0x802).to_bytes(4, "big") + raw[4:])
    elif breakage == "short_body":
        _write_gz(path, raw[:-1])
    with pytest.raises(fm.DataError, match=message) as info:
        fm.read_split(data_copy, "test")
    assert str(path) in str(info.value)


def test_images_and_labels_of_different_lengths(data_copy):
    path = data_copy / fm.FILES["test_labels"]
    raw = gzip.decompress(path.read_bytes())
    _write_gz(path, raw[:4] + (9000).to_bytes(4, "big") + raw[8 : 8 + 9000])
    with pytest.raises(fm.DataError, match="10000 images but .* 9000 labels"):
        fm.read_split(data_copy, "test")


def test_wrong_example_count(data_copy):
    for kind, header in (("images", 16), ("labels", 8)):
        path = data_copy / fm.FILES[f"test_{kind}"]
        raw = gzip.decompress(path.read_bytes())
        per = 784 if kind == "images" else 1
        _write_gz(
            path,
            raw[:4]
            + (5000).to_bytes(4, "big")
            + raw[8:header]
            + raw[header : header + 5000 * per],
        )
    with pytest.raises(fm.DataError, match="5000 examples.*has 10000"):
        fm.read_split(data_copy, "test")


def _load_into(tfds_dir):
    return fm.load_fashion_mnist(tfds_dir=tfds_dir)


def test_an_interrupted_preparation_is_rebuilt(tmp_path, subprocess_env):
    """kill -9 while TFDS writes the dataset; the next load prepares it afresh."""
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    code = "from lenet_jax.data import load_fashion_mnist; load_fashion_mnist()"
    env = dict(subprocess_env, TFDS_DATA_DIR=str(tmp_path))
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("fashion_mnist_local/*/incomplete.*/*train*")):
        assert child.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not list(tmp_path.glob("fashion_mnist_local/*/*/dataset_info.json"))
    data = _load_into(tmp_path)
    assert len(data.train_images) == 60_000 and len(data.test_images) == 10_000


def test_a_damaged_cache_is_rebuilt(tmp_path):
    _load_into(tmp_path)
    (records,) = tmp_path.glob("fashion_mnist_local/*/1.0.0/*-train.array_record*")
    with open(records, "r+b") as f:
        f.truncate(records.stat().st_size // 3)
    data = _load_into(tmp_path)
    assert len(data.train_images) == 60_000
    np.testing.assert_array_equal(np.bincount(data.train_labels), [6000] * 10)


def test_a_cache_folder_without_its_info_is_rebuilt(tmp_path):
    _load_into(tmp_path)
    (info,) = tmp_path.glob("fashion_mnist_local/*/1.0.0/dataset_info.json")
    info.unlink()
    assert len(_load_into(tmp_path).test_images) == 10_000
