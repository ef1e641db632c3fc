"""A run's data on its training device: ``prepare_data`` loads the data set, holds out the
validation split (``data.val_size``), normalises (``data.normalize``, ``data.pad_fill``) and
moves the images to the device as uint8 (``DeviceData``); ``epoch_data`` draws one epoch's
order and augmentation in bulk. Shared by ``convnets.train``, ``convnets.multiseed`` and the
bench; imports the data sets and the augmentation, nothing of training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from convnets.augment import crop_flip, draw_crop_flip
from convnets.config import eval_split
from convnets.data import channel_stats, load_dataset, pixel_mean, stratified_split


@dataclass
class DeviceData:
    """Training and evaluation images as uint8 on the training device, plus normalisation."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    eval_x: torch.Tensor
    eval_y: torch.Tensor
    eval_split: str  # "test" or "val"
    mean: torch.Tensor | None
    std: torch.Tensor | None
    num_classes: int
    info: dict[str, Any]
    #: per-channel padding value of the crop (None: zeros); normalises to exactly 0
    pad_fill: torch.Tensor | None = None


def prepare_data(cfg: dict, device: torch.device, dataset=None) -> DeviceData:
    """Load the dataset and move it to ``device``.

    With ``data.val_size > 0`` the evaluation set is a fixed stratified split of the training
    set, and the test set is not read at all (tuning and selection never see it).
    """
    d = cfg["data"]
    ds = dataset or load_dataset(d["name"], d["data_dir"], **d["options"])
    tr_x, tr_y = ds.train.images, ds.train.labels
    split = eval_split(cfg)
    if split == "val":
        tr_idx, val_idx = stratified_split(tr_y, d["val_size"], d["split_seed"])
        ev_x, ev_y = tr_x[val_idx], tr_y[val_idx]
        tr_x, tr_y = tr_x[tr_idx], tr_y[tr_idx]
    else:
        ev_x, ev_y = ds.test.images, ds.test.labels
    info = {"dataset": ds.name, "dataset_label": ds.label, "dataset_checksum": ds.checksum}
    tr_x, ev_x, mean, std, fill = _normalisation(d, tr_x, ev_x, info)
    return DeviceData(
        train_x=tr_x.to(device),
        train_y=tr_y.to(device),
        eval_x=ev_x.to(device),
        eval_y=ev_y.to(device),
        eval_split=split,
        mean=None if mean is None else mean.to(device),
        std=None if std is None else std.to(device),
        num_classes=ds.num_classes,
        info=info,
        pad_fill=None if fill is None else fill.to(device),
    )


def _normalisation(d: dict, tr_x: torch.Tensor, ev_x: torch.Tensor, info: dict):
    """(train images, eval images, mean, std, pad fill) for the ``data.normalize`` mode.

    Statistics come from the training split only (after any validation hold-out).

    * ``pixel`` (He et al. 2015, Sec. 4.2): images become int16 ``x - M`` with ``M`` the
      per-pixel mean image rounded to integers (< 0.5 grey levels from the exact mean), so
      the mean is subtracted at each pixel's own position *before* the crop, and the crop pads
      with 0 = the mean; ``to_float`` then only converts (mean 0, std 1).
    * ``channel`` with ``pad_fill: mean``: the padding colour is the per-channel mean rounded
      to uint8, and the same rounded mean is subtracted, so padded pixels are exactly 0 (as
      when normalising first and zero-padding, fb.resnet.torch / DenseNet Lua); the std is
      exact. ``pad_fill: zero`` keeps the exact mean and black padding (the old behaviour).
    """
    mode = "channel" if d["normalize"] is True else d["normalize"]
    info["normalize"] = mode or "none"
    info["pad_fill"] = d["pad_fill"]
    if mode == "pixel":
        m_img = pixel_mean(tr_x).round().to(torch.int16)
        info["train_pixel_mean_channel_avg"] = [round(float(v), 4)
                                                for v in m_img.double().mean((1, 2))]
        c = tr_x.shape[1]
        zero, one = torch.zeros(c), torch.ones(c)
        return (tr_x.to(torch.int16) - m_img, ev_x.to(torch.int16) - m_img, zero, one,
                torch.zeros(c, dtype=torch.int16))
    if not mode:
        return tr_x, ev_x, None, None, None
    m, s = channel_stats(tr_x)
    info["train_mean"] = [round(v, 4) for v in m]
    info["train_std"] = [round(v, 4) for v in s]
    fill = None
    if d["pad_fill"] == "mean":
        fill = torch.tensor([min(255, max(0, round(v))) for v in m], dtype=torch.uint8)
        m = tuple(float(v) for v in fill)
    return (tr_x, ev_x, torch.tensor(m, dtype=torch.float32),
            torch.tensor(s, dtype=torch.float32), fill)


def epoch_data(train_x, train_y, n_samples: int, pad: int, augment: bool,
               generator: torch.Generator, fill: torch.Tensor | None = None):
    """One epoch's training data in bulk: a fresh permutation (drawn on CPU, applied on the
    device), then pad/crop/flip of every image in one gather. Batches are slices of it.
    ``fill``: per-channel padding value (``DeviceData.pad_fill``; None pads with 0)."""
    perm = torch.randperm(train_x.shape[0], generator=generator)[:n_samples].to(train_x.device)
    x = train_x[perm]
    if augment:
        dy, dx, flip = draw_crop_flip(x.shape[0], pad, generator)
        x = crop_flip(x, dy, dx, flip, pad, fill)
    return x, train_y[perm]
