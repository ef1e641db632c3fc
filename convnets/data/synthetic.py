"""Synthetic data: a deterministic, learnable, offline data set for smoke runs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .dataset import Dataset, DatasetError, _sha256, _to_dataset

_SYNTHETIC_DEFAULTS: dict[str, Any] = {
    "n_train": 512, "n_test": 256, "num_classes": 10, "image_size": 32, "channels": 3,
    "noise": 1.0, "seed": 0,
}


def _derived_generator(seed: int, stream: int) -> torch.Generator:
    mixed = (int(seed) * 0x9E3779B97F4A7C15 + stream * 0xBF58476D1CE4E5B9) % (1 << 63)
    return torch.Generator().manual_seed(mixed)


def _synthetic_config(opts: dict[str, Any]) -> dict[str, Any]:
    """The options over their defaults, checked; the integer ones as ``int``."""
    cfg = {**_SYNTHETIC_DEFAULTS, **opts}
    ints = ("n_train", "n_test", "num_classes", "image_size", "channels", "seed")
    for k in ints:
        v = cfg[k]
        if isinstance(v, bool) or not hasattr(v, "__index__"):
            raise DatasetError(f"synthetic option {k}={v!r} must be an integer")
        cfg[k] = int(v)
    for k, lo in (("n_train", 1), ("n_test", 1), ("num_classes", 2), ("image_size", 4),
                  ("channels", 1)):
        if cfg[k] < lo:
            raise DatasetError(f"synthetic option {k}={cfg[k]} must be at least {lo}")
    if not isinstance(cfg["noise"], (int, float)) or isinstance(cfg["noise"], bool) \
            or not 0 <= cfg["noise"] < math.inf:
        raise DatasetError(f"synthetic option noise={cfg['noise']!r} must be a number >= 0")
    return cfg


def _load_synthetic(root: Path, download: bool, **opts: Any) -> Dataset:
    """Class templates (random low-frequency patterns) + per-sample shift, contrast and noise.

    Pixel = 128 + 40 * (contrast * shifted template + noise * N(0, 1)), rounded and clamped to
    uint8, where each template has zero mean and unit std. Train and test draw from separate
    generator streams, so the test set does not depend on ``n_train``.
    """
    label = opts.pop("label", "synthetic (smoke)")
    cfg = _synthetic_config(opts)
    k, size, c, seed = cfg["num_classes"], cfg["image_size"], cfg["channels"], cfg["seed"]
    noise = float(cfg["noise"])
    shift = max(1, size // 16)
    big = size + 2 * shift
    grid = max(2, size // 8)
    gen = _derived_generator(seed, 0)
    templates = torch.randn(k, c, grid, grid, generator=gen, dtype=torch.float64)
    templates = F.interpolate(templates, size=(big, big), mode="bilinear", align_corners=False)
    flat = templates.reshape(k, -1)
    flat = (flat - flat.mean(1, keepdim=True)) / flat.std(1, keepdim=True).clamp_min(1e-8)
    templates = flat.reshape(k, c, big, big)

    def sample(n: int, stream: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = _derived_generator(seed, stream)
        labels = (torch.arange(n) % k)[torch.randperm(n, generator=g)]
        offsets = torch.randint(0, 2 * shift + 1, (n, 2), generator=g)
        contrast = 1.0 + 0.25 * torch.randn(n, 1, 1, 1, generator=g, dtype=torch.float64)
        x = torch.empty(n, c, size, size, dtype=torch.float64)
        for dy in range(2 * shift + 1):
            for dx in range(2 * shift + 1):
                sel = torch.nonzero((offsets[:, 0] == dy) & (offsets[:, 1] == dx)).squeeze(1)
                if sel.numel():
                    x[sel] = templates[labels[sel], :, dy : dy + size, dx : dx + size]
        x = x * contrast + noise * torch.randn(x.shape, generator=g, dtype=torch.float64)
        images = (128.0 + 40.0 * x).round().clamp(0, 255).to(torch.uint8).contiguous()
        return images, labels.to(torch.int64)

    tr_x, tr_y = sample(cfg["n_train"], 1)
    te_x, te_y = sample(cfg["n_test"], 2)
    payload = {"train_images": tr_x, "train_labels": tr_y, "test_images": te_x,
               "test_labels": te_y, "classes": [f"class_{i}" for i in range(k)]}
    payload["sha256"] = _sha256(tr_x, tr_y, te_x, te_y)
    return _to_dataset("synthetic", label, payload)
