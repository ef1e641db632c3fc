"""Train/validation split: a stratified, seeded hold-out of the training set."""

from __future__ import annotations

import torch


def stratified_split(
    labels: torch.Tensor, val_size: int = 5000, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hold out ``val_size`` samples, each class in proportion to its frequency.

    Per-class quotas use the largest-remainder rule (ties go to the lower class label), so
    they sum to ``val_size`` exactly; within a class the held-out samples are drawn with a
    generator seeded by ``seed``. Returns ``(train_idx, val_idx)``: sorted, disjoint int64
    indices that together cover ``range(len(labels))``. Deterministic for a given input.
    """
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or labels.dtype.is_floating_point or labels.dtype.is_complex \
            or labels.dtype == torch.bool:
        raise ValueError(f"labels must be a 1-D integer tensor, got {labels.dtype} "
                         f"{tuple(labels.shape)}")
    n = int(labels.numel())
    if isinstance(val_size, bool) or not hasattr(val_size, "__index__"):
        raise ValueError(f"val_size must be an integer count of samples, got {val_size!r}")
    val_size = int(val_size)
    if not 0 <= val_size <= n:
        raise ValueError(f"val_size={val_size} must be between 0 and the number of samples ({n})")
    labels = labels.detach().to("cpu", torch.int64)
    classes, counts = torch.unique(labels, sorted=True, return_counts=True)
    counts_l = [int(c) for c in counts]
    quota = [val_size * c // n for c in counts_l] if n else []
    remainder = [val_size * c % n for c in counts_l] if n else []
    missing = val_size - sum(quota)
    for i in sorted(range(len(counts_l)), key=lambda i: (-remainder[i], i))[:missing]:
        quota[i] += 1
    gen = torch.Generator().manual_seed(int(seed))
    picked = []
    for cls, q in zip(classes.tolist(), quota, strict=True):
        members = torch.nonzero(labels == cls).squeeze(1)
        perm = torch.randperm(members.numel(), generator=gen)
        picked.append(members[perm[:q]])
    is_val = torch.zeros(n, dtype=torch.bool)
    if picked:
        is_val[torch.cat(picked)] = True
    val_idx = torch.nonzero(is_val).squeeze(1)
    train_idx = torch.nonzero(~is_val).squeeze(1)
    return train_idx, val_idx
