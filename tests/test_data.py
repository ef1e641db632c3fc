"""Tests of convnets.data: every format is built tiny, in its real on-disk layout, in tmp_path.

Nothing here reads the network or a shared data copy: downloads are made to fail.
"""

from __future__ import annotations

import os
import pickle
import stat
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from convnets.data import (
    Dataset,
    DatasetError,
    cifar,
    default_data_dir,
    list_datasets,
    load_dataset,
)
from tests.data_formats import (
    as_nchw,
    write_cifar10,
    write_idx,
    write_imagefolder,
    write_mnist,
    write_png,
)

# ---------------------------------------------------------------------------------------------
# fixtures and writers of the real formats
# ---------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """No network, and the default data dir (cache fallback) lives in tmp_path."""

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setenv("CONVNETS_DATA", str(tmp_path / "default-data"))


# ---------------------------------------------------------------------------------------------
# CIFAR
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bytes_keys", [True, False])
def test_cifar10_reads_pickle_batches_exactly(tmp_path, bytes_keys):
    ref = write_cifar10(tmp_path, bytes_keys=bytes_keys)
    ds = load_dataset("cifar10", tmp_path)  # download=True, but the folder is present
    assert isinstance(ds, Dataset)
    assert ds.name == "cifar10" and ds.label == "CIFAR-10"
    assert ds.classes == ref["classes"] and ds.num_classes == 10
    assert ds.in_channels == 3 and ds.image_size == (32, 32)
    assert ds.train.images.dtype == torch.uint8 and ds.train.labels.dtype == torch.int64
    assert ds.train.images.is_contiguous() and ds.test.images.is_contiguous()
    assert torch.equal(ds.train.images, torch.from_numpy(ref["train_x"]).reshape(50, 3, 32, 32))
    assert ds.train.labels.tolist() == ref["train_y"]
    assert torch.equal(ds.test.images, torch.from_numpy(ref["test_x"]).reshape(10, 3, 32, 32))
    assert ds.test.labels.tolist() == ref["test_y"]
    assert len(ds.checksum) >= 16 and int(ds.checksum, 16) >= 0
    # pixel (c, y, x) of an image is data[c * 1024 + y * 32 + x]
    assert ds.train.images[3, 1, 2, 5].item() == ref["train_x"][3, 1024 + 2 * 32 + 5]


def test_cifar100_reads_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(3)
    x_tr = rng.integers(0, 256, (6, 3072), dtype=np.uint8)
    x_te = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
    y_tr, y_te = [0, 99, 5, 5, 42, 7], [1, 2, 3, 99]
    for name, x, y in (("train", x_tr, y_tr), ("test", x_te, y_te)):
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": x, b"fine_labels": y, b"coarse_labels": [0] * len(y)}, f, 2)
    names = [f"c{i}" for i in range(100)]
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [n.encode() for n in names],
                     b"coarse_label_names": [b"x"] * 20}, f, 2)
    ds = load_dataset("cifar100", tmp_path, label="mine")
    assert ds.label == "mine" and ds.classes == names
    assert ds.train.labels.tolist() == y_tr and ds.test.labels.tolist() == y_te
    assert torch.equal(ds.test.images, torch.from_numpy(x_te).reshape(4, 3, 32, 32))


def test_cifar_truncated_batch_names_the_file(tmp_path):
    write_cifar10(tmp_path)
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(bad.read_bytes()[:700])
    with pytest.raises(DatasetError, match="data_batch_3"):
        load_dataset("cifar10", tmp_path)


def test_cifar_label_count_mismatch(tmp_path):
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    with open(path, "rb") as f:
        batch = pickle.load(f)
    batch[b"labels"] = batch[b"labels"][:-1]
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)
    with pytest.raises(DatasetError, match=r"test_batch.*10 images but 9 labels"):
        load_dataset("cifar10", tmp_path)


def test_cifar_pickle_with_foreign_objects_is_refused(tmp_path):
    write_cifar10(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "wb") as f:
        pickle.dump({"data": Path("x"), "labels": []}, f)
    with pytest.raises(DatasetError, match="data_batch_1"):
        load_dataset("cifar10", tmp_path)


# ---------------------------------------------------------------------------------------------
# cache
# ---------------------------------------------------------------------------------------------


def test_cache_written_reused_and_verified(tmp_path, monkeypatch):
    write_cifar10(tmp_path)
    first = load_dataset("cifar10", tmp_path)
    cache = tmp_path / ".convnets-cache" / "cifar10.pt"
    assert cache.is_file()

    def fail(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    with monkeypatch.context() as m:
        m.setattr(cifar, "_read_pickle", fail)  # the CIFAR loader's one reader of pickles
        second = load_dataset("cifar10", tmp_path)
    assert torch.equal(first.train.images, second.train.images)
    assert first.checksum == second.checksum and first.classes == second.classes

    blob = torch.load(cache, weights_only=True)
    blob["train_images"][0, 0, 0, 0] ^= 1
    torch.save(blob, cache)
    with pytest.raises(DatasetError, match=r"(?s)cifar10\.pt.*delete"):
        load_dataset("cifar10", tmp_path)

    blob["train_images"] = blob["train_images"][:-1].clone()  # shape no longer matches
    torch.save(blob, cache)
    with pytest.raises(DatasetError, match=r"(?s)cifar10\.pt.*delete"):
        load_dataset("cifar10", tmp_path)

    cache.write_bytes(b"not a torch file")
    with pytest.raises(DatasetError, match=r"(?s)cifar10\.pt.*unreadable.*delete"):
        load_dataset("cifar10", tmp_path)

    cache.write_bytes(b"")  # an empty file
    with pytest.raises(DatasetError, match=r"(?s)cifar10\.pt.*unreadable.*delete"):
        load_dataset("cifar10", tmp_path)

    cache.unlink()
    load_dataset("cifar10", tmp_path)
    good = cache.read_bytes()
    cache.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(DatasetError, match=r"(?s)cifar10\.pt.*unreadable.*delete"):
        load_dataset("cifar10", tmp_path)

    cache.write_bytes(b"not a torch file")
    with pytest.raises(DatasetError, match=r"(?s)cifar10\.pt.*unreadable.*delete"):
        load_dataset("cifar10", tmp_path)

    cache.unlink()
    assert load_dataset("cifar10", tmp_path).checksum == first.checksum
    assert load_dataset("cifar10", tmp_path, cache=False).checksum == first.checksum


def test_cache_edit_outside_the_tensors_is_detected(tmp_path):
    """The digest covers every entry of the cache: an edited class name (pixels, labels and
    their sha256 untouched) is corruption, not a silently renamed class."""
    write_cifar10(tmp_path)
    first = load_dataset("cifar10", tmp_path)
    cache = tmp_path / ".convnets-cache" / "cifar10.pt"
    blob = torch.load(cache, weights_only=True)
    assert blob["classes"][0] == first.classes[0] != "renamed"
    blob["classes"][0] = "renamed"
    torch.save(blob, cache)
    with pytest.raises(DatasetError, match=r"(?s)cifar10\.pt.*sha256.*delete"):
        load_dataset("cifar10", tmp_path)

    blob = torch.load(cache, weights_only=True)
    blob["classes"][0] = first.classes[0]
    blob["extra"] = torch.zeros(3)  # a tensor smuggled in beside the four splits
    torch.save(blob, cache)
    with pytest.raises(DatasetError, match=r"(?s)cifar10\.pt.*sha256.*delete"):
        load_dataset("cifar10", tmp_path)

    blob.pop("extra")
    torch.save(blob, cache)
    assert load_dataset("cifar10", tmp_path).classes == first.classes


def test_cache_of_the_previous_format_is_rebuilt(tmp_path):
    write_cifar10(tmp_path)
    first = load_dataset("cifar10", tmp_path)
    cache = tmp_path / ".convnets-cache" / "cifar10.pt"
    blob = torch.load(cache, weights_only=True)
    blob["format"] = 1
    blob.pop("content_sha256")
    torch.save(blob, cache)
    assert load_dataset("cifar10", tmp_path).checksum == first.checksum
    assert torch.load(cache, weights_only=True)["format"] == 2


def test_cache_invalidated_when_sources_change(tmp_path):
    write_cifar10(tmp_path)
    first = load_dataset("cifar10", tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    with open(path, "rb") as f:
        batch = pickle.load(f)
    batch[b"data"] = 255 - batch[b"data"]
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    second = load_dataset("cifar10", tmp_path)
    assert torch.equal(second.test.images, 255 - first.test.images)
    assert second.checksum != first.checksum


# ---------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "cls_name", "gz"),
                         [("mnist", "MNIST", False), ("fashion_mnist", "FashionMNIST", True)])
def test_mnist_idx_read_exactly(tmp_path, name, cls_name, gz):
    ref = write_mnist(tmp_path, cls_name, gz=gz)
    ds = load_dataset(name, tmp_path)
    assert ds.name == name and ds.label == {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}[name]
    assert ds.num_classes == 10 and ds.in_channels == 1 and ds.image_size == (28, 28)
    assert torch.equal(ds.train.images[:, 0], torch.from_numpy(ref["train-images-idx3-ubyte"]))
    assert torch.equal(ds.test.images[:, 0], torch.from_numpy(ref["t10k-images-idx3-ubyte"]))
    assert ds.train.labels.tolist() == ref["train-labels-idx1-ubyte"].tolist()
    assert ds.test.labels.tolist() == ref["t10k-labels-idx1-ubyte"].tolist()
    assert ds.train.labels.dtype == torch.int64
    if name == "fashion_mnist":
        assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    assert (tmp_path / ".convnets-cache" / f"{name}.pt").is_file()


def test_idx_wrong_magic(tmp_path):
    write_mnist(tmp_path, "MNIST", gz=False)
    bad = tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    bad.write_bytes(b"\x12\x34" + bad.read_bytes()[2:])
    with pytest.raises(DatasetError, match=r"train-labels-idx1-ubyte.*not an IDX file"):
        load_dataset("mnist", tmp_path)


def test_idx_wrong_length(tmp_path):
    write_mnist(tmp_path, "MNIST", gz=False)
    bad = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    bad.write_bytes(bad.read_bytes()[:-5])
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte.*truncated"):
        load_dataset("mnist", tmp_path)


def test_idx_truncated_gzip(tmp_path):
    write_mnist(tmp_path, "FashionMNIST", gz=True)
    bad = tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte\.gz"):
        load_dataset("fashion_mnist", tmp_path)


def test_idx_label_count_mismatch(tmp_path):
    write_mnist(tmp_path, "MNIST", gz=False)
    write_idx(tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte", np.zeros(11, np.uint8))
    with pytest.raises(DatasetError, match="12 images but 11 labels"):
        load_dataset("mnist", tmp_path)


def test_read_only_data_dir_caches_elsewhere(tmp_path):
    shared = tmp_path / "shared"
    write_mnist(shared, "FashionMNIST", gz=True)
    modes = {}
    for p in [shared, *shared.rglob("*")]:
        modes[p] = p.stat().st_mode
        p.chmod(stat.S_IMODE(modes[p]) & ~0o222)
    try:
        first = load_dataset("fashion_mnist", shared)
        second = load_dataset("fashion_mnist", shared)
    finally:
        for p, mode in modes.items():
            p.chmod(stat.S_IMODE(mode))
    assert not (shared / ".convnets-cache").exists()
    cached = list((default_data_dir() / ".convnets-cache").glob("fashion_mnist-*.pt"))
    assert len(cached) == 1
    assert first.checksum == second.checksum


# ---------------------------------------------------------------------------------------------
# image folders
# ---------------------------------------------------------------------------------------------


def test_imagefolder_png_exact_with_class_and_numeric_order(tmp_path):
    root = tmp_path / "pets"
    ref = write_imagefolder(root)
    ds = load_dataset(f"imagefolder:{root}")
    assert ds.name == f"imagefolder:{root.resolve()}"
    assert ds.label == "ImageFolder (pets)"
    assert ds.classes == ["cat", "dog"]
    for split, images in (("train", ds.train), ("test", ds.test)):
        expected = ref[split]
        assert images.labels.tolist() == [ds.classes.index(c) for c, _, _ in expected]
        assert torch.equal(images.images, torch.stack([as_nchw(a) for _, _, a in expected]))
    assert [n for _, n, _ in ref["train"][:3]] == [1, 2, 10]
    assert (root / ".convnets-cache").is_dir()
    again = load_dataset(f"imagefolder:{root}", label="custom")
    assert again.label == "custom" and again.checksum == ds.checksum


def test_imagefolder_cifar_jpeg_label_and_jpeg_decoding(tmp_path):
    from PIL import Image

    root = tmp_path / "cifar10-jpeg-q75"
    rng = np.random.default_rng(4)
    for split in ("train", "test"):
        for cls in ("airplane", "bird"):
            for i in range(3):
                (root / split / cls).mkdir(parents=True, exist_ok=True)
                arr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / cls / f"{i:04d}.jpg", quality=75)
    ds = load_dataset(f"imagefolder:{root}")
    assert ds.label == "CIFAR-10 (JPEG q75 copy)"
    assert ds.train.images.shape == (6, 3, 32, 32) and ds.test.images.shape == (6, 3, 32, 32)
    assert ds.train.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_imagefolder_shape_mismatch_names_file(tmp_path):
    root = tmp_path / "mixed"
    write_imagefolder(root)
    write_png(root / "test" / "dog" / "7.png", np.zeros((9, 8, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"7\.png.*share one shape"):
        load_dataset(f"imagefolder:{root}")


def test_imagefolder_undecodable_file_named(tmp_path):
    root = tmp_path / "broken"
    write_imagefolder(root)
    (root / "train" / "cat" / "5.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(DatasetError, match=r"5\.jpg"):
        load_dataset(f"imagefolder:{root}")


def test_imagefolder_cache_follows_file_changes(tmp_path):
    root = tmp_path / "grow"
    write_imagefolder(root)
    first = load_dataset(f"imagefolder:{root}")
    write_png(root / "train" / "cat" / "11.png", np.full((8, 8, 3), 7, np.uint8))
    second = load_dataset(f"imagefolder:{root}")
    assert len(second.train) == len(first.train) + 1
    assert int(second.train.images[3].float().mean()) == 7  # cat: 1, 2, 10, 11


def test_imagefolder_missing_layout(tmp_path):
    (tmp_path / "flat").mkdir()
    with pytest.raises(DatasetError, match="train"):
        load_dataset(f"imagefolder:{tmp_path / 'flat'}")
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(f"imagefolder:{tmp_path / 'nowhere'}")


# ---------------------------------------------------------------------------------------------
# offline, names, options
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cifar10", "mnist", "fashion_mnist"])
def test_offline_download_gives_ways_out(tmp_path, name):
    with pytest.raises(DatasetError) as info:
        load_dataset(name, tmp_path / "empty", download=True)
    msg = str(info.value)
    assert "--data-dir" in msg and "synthetic" in msg and "CONVNETS_DATA" in msg


def test_no_download_into_read_only_dir(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(DatasetError, match=r"(?s)read-only.*--data-dir.*synthetic"):
            load_dataset("cifar10", ro, download=True)
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_missing_without_download(tmp_path):
    with pytest.raises(DatasetError, match=r"(?s)download=False.*--data-dir.*synthetic"):
        load_dataset("cifar10", tmp_path, download=False)


def test_unknown_name_and_bad_options(tmp_path):
    with pytest.raises(DatasetError, match=r"(?s)imagenet.*cifar10.*synthetic"):
        load_dataset("imagenet", tmp_path)
    with pytest.raises(DatasetError, match="n_trian"):
        load_dataset("synthetic", n_trian=10)
    with pytest.raises(DatasetError, match="noise"):
        load_dataset("cifar10", tmp_path, noise=0.5)
    with pytest.raises(DatasetError, match="n_train"):
        load_dataset("synthetic", n_train=0)
    with pytest.raises(DatasetError, match="mode"):
        load_dataset(f"imagefolder:{tmp_path}", mode="cmyk")


def test_list_and_default_dir(tmp_path, monkeypatch):
    names = list_datasets()
    for n in ("cifar10", "cifar100", "mnist", "fashion_mnist", "synthetic"):
        assert n in names
    assert any(n.startswith("imagefolder:") for n in names)
    assert default_data_dir() == tmp_path / "default-data"
    monkeypatch.delenv("CONVNETS_DATA")
    assert default_data_dir() == Path.home() / ".cache" / "convnets" / "data"


def _restore_times(path, st):
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # as cp -p, rsync -t, touch -r do


def test_a_label_byte_changed_with_its_mtime_restored_is_read_again(tmp_path):
    """Failed on the main of 2026-12-07: the decoded cache was keyed on (name, size, mtime),
    so an edit with the old mtime put back trained on the old labels."""
    write_mnist(tmp_path, "MNIST", gz=False)
    before = load_dataset("mnist", tmp_path)
    labels = tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    st = labels.stat()
    raw = bytearray(labels.read_bytes())
    raw[8] = (raw[8] + 1) % 10  # the first label (after the 8-byte IDX header)
    time.sleep(0.01)
    labels.write_bytes(bytes(raw))
    _restore_times(labels, st)
    assert labels.stat().st_mtime_ns == st.st_mtime_ns and labels.stat().st_size == st.st_size
    after = load_dataset("mnist", tmp_path)
    assert after.train.labels[0] == (before.train.labels[0] + 1) % 10
    assert after.checksum != before.checksum


def test_two_same_size_images_swapped_between_classes_are_read_again(tmp_path):
    write_imagefolder(tmp_path / "imgs")
    before = load_dataset("imagefolder:" + str(tmp_path / "imgs"))
    a = tmp_path / "imgs" / "train" / "cat" / "1.png"
    b = tmp_path / "imgs" / "train" / "dog" / "1.png"
    sa, sb = a.stat(), b.stat()
    data_a, data_b = a.read_bytes(), b.read_bytes()
    assert len(data_a) == len(data_b)  # 8x8 random RGB: incompressible, one PNG size
    time.sleep(0.01)
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    _restore_times(a, sa)
    _restore_times(b, sb)
    after = load_dataset("imagefolder:" + str(tmp_path / "imgs"))
    assert after.checksum != before.checksum
