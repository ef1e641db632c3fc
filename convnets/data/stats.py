"""Normalisation statistics of uint8 images: per-channel mean and std, and the per-pixel mean
image, computed exactly where the data are uint8."""

from __future__ import annotations

import math

import torch


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std of (N, C, H, W) images, on their own scale.

    For uint8 (0-255) the sums come exactly from per-channel 256-bin histograms (one float
    division at the end); other dtypes accumulate in float64, chunk by chunk.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError("channel_stats expects a tensor of shape (N, C, H, W), got "
                         f"{getattr(images, 'shape', type(images))}")
    n, c, h, w = images.shape
    count = n * h * w
    if count == 0:
        raise ValueError("channel_stats needs at least one pixel")
    images = images.detach().cpu()
    means, stds = [], []
    if images.dtype == torch.uint8:
        # exact: a 256-bin histogram per channel gives integer sums of x and x^2
        values = torch.arange(256, dtype=torch.int64)
        for ch in range(c):
            hist = torch.bincount(images[:, ch].reshape(-1), minlength=256)
            s1 = int((hist * values).sum())
            s2 = int((hist * values * values).sum())
            means.append(s1 / count)
            stds.append(math.sqrt(max((count * s2 - s1 * s1) / (count * count), 0.0)))
        return tuple(means), tuple(stds)
    s1 = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    step = max(1, (1 << 22) // max(1, c * h * w))
    for i in range(0, n, step):
        x = images[i : i + step].to(torch.float64)
        s1 += x.sum(dim=(0, 2, 3))
        s2 += (x * x).sum(dim=(0, 2, 3))
    for a, b in zip(s1.tolist(), s2.tolist(), strict=True):
        means.append(a / count)
        stds.append(math.sqrt(max(b / count - (a / count) ** 2, 0.0)))
    return tuple(means), tuple(stds)


def pixel_mean(images: torch.Tensor) -> torch.Tensor:
    """Per-pixel mean image (C, H, W), float64, of (N, C, H, W) images on their own scale.

    He et al. 2015 (Sec. 4.2) subtract "the per-pixel mean"; for uint8 the sum over images is
    exact (int64), so the mean is the exact rational value rounded once to float64.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError("pixel_mean expects a tensor of shape (N, C, H, W), got "
                         f"{getattr(images, 'shape', type(images))}")
    if images.shape[0] == 0:
        raise ValueError("pixel_mean needs at least one image")
    images = images.detach().cpu()
    if images.dtype == torch.uint8:
        total = torch.zeros(images.shape[1:], dtype=torch.int64)
        for i in range(0, images.shape[0], 4096):
            total += images[i : i + 4096].to(torch.int64).sum(0)
        return total.to(torch.float64) / images.shape[0]
    return images.to(torch.float64).mean(0)
