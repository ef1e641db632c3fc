"""The papers' augmentation, vectorised over a whole batch (or epoch) on the training device.

He et al. 2015 (Sec. 4.2), Identity Mappings and DenseNet all use the same recipe: pad 4 pixels
with zeros, take a random 32x32 crop, flip horizontally with probability 1/2. Random draws are
made on a CPU ``torch.Generator`` (so a seed gives the same draws on every device, and the
generator state is easy to checkpoint), then one gather applies crop and flip to every image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def draw_crop_flip(
    n: int, pad: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image crop offsets ``dy, dx`` in ``[0, 2*pad]`` and flip flags, drawn on CPU."""
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    return dy, dx, flip


def crop_flip(
    images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, pad: int = 4
) -> torch.Tensor:
    """Zero-pad by ``pad``, crop each image at ``(dy, dx)`` back to its size, flip where asked.

    ``images`` is (N, C, H, W) of any dtype (uint8 stays uint8); the result has the same shape,
    dtype and device. One gather per call, no per-image Python.
    """
    n, c, h, w = images.shape
    dev = images.device
    dy, dx, flip = dy.to(dev), dx.to(dev), flip.to(dev)
    padded = F.pad(images, (pad, pad, pad, pad)) if pad else images
    rows = dy[:, None] + torch.arange(h, device=dev)  # (N, H)
    cols_fwd = torch.arange(w, device=dev)
    cols = torch.where(flip[:, None], w - 1 - cols_fwd, cols_fwd) + dx[:, None]  # (N, W)
    # gather rows, then columns (two cheap gathers instead of one 4-D fancy index)
    wp = padded.shape[-1]
    out = torch.gather(padded, 2, rows[:, None, :, None].expand(n, c, h, wp))
    return torch.gather(out, 3, cols[:, None, None, :].expand(n, c, h, w))


def crop_flip_reference(
    images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, pad: int = 4
) -> torch.Tensor:
    """Per-image loop version of :func:`crop_flip`, the obvious way; tests compare the two."""
    out = torch.empty_like(images)
    for i in range(images.shape[0]):
        img = F.pad(images[i], (pad, pad, pad, pad))
        y, x = int(dy[i]), int(dx[i])
        crop = img[:, y : y + images.shape[2], x : x + images.shape[3]]
        out[i] = crop.flip(-1) if bool(flip[i]) else crop
    return out


def to_float(
    x: torch.Tensor,
    mean: torch.Tensor | None,
    std: torch.Tensor | None,
    resize: int | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """uint8 batch -> float32 network input.

    With ``mean``/``std`` (0-255 scale, shape (C,)) the batch is standardised per channel, as
    the CIFAR papers do; without them it is scaled to [0, 1] (d2l's ToTensor). ``resize``
    upsamples bilinearly to ``resize x resize`` (d2l's Fashion-MNIST at 96x96).
    """
    x = x.float()
    if mean is not None:
        x = (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    else:
        x = x / 255.0
    if resize is not None and x.shape[-1] != resize:
        x = F.interpolate(x, size=(resize, resize), mode="bilinear", align_corners=False)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x
