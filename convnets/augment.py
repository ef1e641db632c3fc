"""The papers' augmentation, vectorised over a whole batch (or epoch) on the training device.

He et al. 2015 (Sec. 4.2), Identity Mappings and DenseNet all use the same recipe: pad 4 pixels
with zeros, take a random 32x32 crop, flip horizontally with probability 1/2. The reference
pipelines (fb.resnet.torch, DenseNet's Lua code) normalise first and pad afterwards, so a padded
pixel is 0 at the network input, i.e. the mean colour. We augment uint8 (or int16 mean-subtracted)
images, so ``fill`` gives the padding value that normalises to exactly 0 (see
``convnets.device_data.prepare_data``); ``fill=None`` pads with 0 (black for raw uint8 images). Random draws are
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


def pad_images(images: torch.Tensor, pad: int, fill: torch.Tensor | None = None) -> torch.Tensor:
    """Pad (N, C, H, W) ``images`` by ``pad`` on each side with 0, or with ``fill`` (shape (C,),
    one value per channel, cast to the images' dtype)."""
    if not pad:
        return images
    if fill is None:
        return F.pad(images, (pad, pad, pad, pad))
    n, c, h, w = images.shape
    fill = torch.as_tensor(fill).to(device=images.device, dtype=images.dtype).reshape(-1)
    if fill.numel() != c:
        raise ValueError(f"pad fill has {fill.numel()} values but the images have {c} channels")
    out = fill.view(1, c, 1, 1).expand(n, c, h + 2 * pad, w + 2 * pad).clone()
    out[:, :, pad : pad + h, pad : pad + w] = images
    return out


def crop_flip(
    images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, pad: int = 4,
    fill: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pad by ``pad`` (with 0, or per-channel ``fill``), crop each image at ``(dy, dx)`` back to
    its size, flip where asked.

    ``images`` is (N, C, H, W) of any dtype (uint8 stays uint8); the result has the same shape,
    dtype and device. One gather per call, no per-image Python.
    """
    n, c, h, w = images.shape
    dev = images.device
    dy, dx, flip = dy.to(dev), dx.to(dev), flip.to(dev)
    padded = pad_images(images, pad, fill)
    rows = dy[:, None] + torch.arange(h, device=dev)  # (N, H)
    cols_fwd = torch.arange(w, device=dev)
    cols = torch.where(flip[:, None], w - 1 - cols_fwd, cols_fwd) + dx[:, None]  # (N, W)
    # gather rows, then columns (two cheap gathers instead of one 4-D fancy index)
    wp = padded.shape[-1]
    out = torch.gather(padded, 2, rows[:, None, :, None].expand(n, c, h, wp))
    return torch.gather(out, 3, cols[:, None, None, :].expand(n, c, h, w))


def crop_flip_reference(
    images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, pad: int = 4,
    fill: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-image loop version of :func:`crop_flip`, the obvious way; tests compare the two."""
    out = torch.empty_like(images)
    for i in range(images.shape[0]):
        img = F.pad(images[i], (pad, pad, pad, pad))
        if fill is not None:  # overwrite the border, channel by channel
            inner = img[:, pad : pad + images.shape[2], pad : pad + images.shape[3]].clone()
            for ch in range(img.shape[0]):
                img[ch] = fill[ch]
            img[:, pad : pad + images.shape[2], pad : pad + images.shape[3]] = inner
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
    the CIFAR papers do; without them it is scaled to [0, 1] (d2l's ToTensor). Per-pixel mean
    subtraction (He et al. 2015) arrives here as int16 images already minus the mean image,
    with ``mean`` 0 and ``std`` 1 (see ``convnets.device_data.prepare_data``). ``resize``
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
