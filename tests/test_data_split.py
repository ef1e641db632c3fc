"""Tests of convnets.data's split, channel statistics and synthetic dataset (no files)."""

from __future__ import annotations

import pytest
import torch

from convnets.data import channel_stats, load_dataset, stratified_split

# ---------------------------------------------------------------------------------------------
# split and statistics
# ---------------------------------------------------------------------------------------------


def test_stratified_split_balanced():
    labels = torch.arange(50_000) % 10
    labels = labels[torch.randperm(50_000, generator=torch.Generator().manual_seed(1))]
    tr, val = stratified_split(labels, 5000, seed=0)
    assert tr.dtype == torch.int64 and val.dtype == torch.int64
    assert len(tr) == 45_000 and len(val) == 5000
    assert torch.equal(torch.sort(torch.cat([tr, val])).values, torch.arange(50_000))
    assert torch.all(tr[1:] > tr[:-1]) and torch.all(val[1:] > val[:-1])
    assert torch.bincount(labels[val], minlength=10).tolist() == [500] * 10
    tr2, val2 = stratified_split(labels, 5000, seed=0)
    assert torch.equal(tr, tr2) and torch.equal(val, val2)
    _, val3 = stratified_split(labels, 5000, seed=1)
    assert not torch.equal(val, val3)


def test_stratified_split_proportional_and_edges():
    labels = torch.tensor([0] * 600 + [1] * 300 + [2] * 100)
    _, val = stratified_split(labels, 100, seed=3)
    assert torch.bincount(labels[val]).tolist() == [60, 30, 10]
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    tr, val = stratified_split(labels, 4)
    assert len(val) == 4 and len(tr) == 5
    assert sorted(torch.bincount(labels[val], minlength=3).tolist()) == [1, 1, 2]
    tr, val = stratified_split(labels, 0)
    assert len(val) == 0 and len(tr) == 9
    with pytest.raises(ValueError):
        stratified_split(labels, 10)
    with pytest.raises(ValueError):
        stratified_split(labels.float(), 2)


def test_channel_stats_matches_float64_reference():
    x = torch.randint(0, 256, (37, 3, 9, 7), generator=torch.Generator().manual_seed(5),
                      dtype=torch.uint8)
    mean, std = channel_stats(x)
    ref = x.to(torch.float64).permute(1, 0, 2, 3).reshape(3, -1)
    assert len(mean) == 3 and all(isinstance(v, float) for v in mean + std)
    assert mean == pytest.approx(ref.mean(1).tolist(), abs=1e-9)
    assert std == pytest.approx(ref.std(1, unbiased=False).tolist(), abs=1e-9)
    fmean, fstd = channel_stats(x.to(torch.float32))
    assert fmean == pytest.approx(mean, abs=1e-6) and fstd == pytest.approx(std, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# synthetic
# ---------------------------------------------------------------------------------------------


def test_synthetic_deterministic_and_shaped():
    a = load_dataset("synthetic")
    b = load_dataset("synthetic", seed=0)
    assert a.name == "synthetic" and a.label == "synthetic (smoke)"
    assert a.train.images.shape == (512, 3, 32, 32) and a.test.images.shape == (256, 3, 32, 32)
    assert a.train.images.dtype == torch.uint8 and a.train.labels.dtype == torch.int64
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert a.checksum == b.checksum
    assert torch.bincount(a.train.labels).tolist() == [52] * 2 + [51] * 8
    c = load_dataset("synthetic", seed=1)
    assert not torch.equal(a.train.images, c.train.images) and a.checksum != c.checksum
    # the test split does not depend on the training size
    d = load_dataset("synthetic", n_train=64)
    assert torch.equal(a.test.images, d.test.images)
    g = load_dataset("synthetic", n_train=30, n_test=12, num_classes=3, image_size=28, channels=1)
    assert g.train.images.shape == (30, 1, 28, 28) and g.num_classes == 3 and g.in_channels == 1


def test_synthetic_is_class_separable():
    ds = load_dataset("synthetic")
    x = ds.train.images.flatten(1).double()
    means = torch.stack([x[ds.train.labels == c].mean(0) for c in range(ds.num_classes)])
    pred = torch.cdist(ds.test.images.flatten(1).double(), means).argmin(1)
    accuracy = (pred == ds.test.labels).double().mean().item()
    assert accuracy > 0.5, accuracy
