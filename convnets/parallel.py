"""What a K-process run changes in the model: batch norm synchronised over the process group
and DistributedDataParallel around it (``data_parallel``, which ``convnets.train.fit`` calls
when its ``World`` has more than one rank).

On CUDA the layers become ``torch.nn.SyncBatchNorm``; that class refuses CPU tensors (torch
2.11-2.14: "expected input tensor to be on GPU"), so on CPU/gloo they become
:class:`CPUSyncBatchNorm`, which all-reduces the per-channel sums with a differentiable
all-reduce. Either way 2 x 16 matches 1 x 32 to float rounding (``tests/test_distributed.py``).
The process group and the launchers are ``convnets.distributed``'s.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from convnets.runtime import world_size

__all__ = ["CPUSyncBatchNorm", "convert_sync_batchnorm", "data_parallel"]


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the backward pass sums the gradients over ranks (d(sum_r L_r)/dx)."""

    @staticmethod
    def forward(ctx, tensor):
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class CPUSyncBatchNorm(_BatchNorm):
    """Batch norm whose training statistics are those of the global batch (all ranks).

    Same parameters, buffers and state-dict keys as ``BatchNorm{1,2,3}d``. Two all-reduces per
    layer (the sums, then the squared deviations: a two-pass variance, as precise as the local
    kernel); gradients flow through both. Outside training, or in a single process, it is plain
    batch norm.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and world_size() > 1):
            return super().forward(input)
        self._check_input_dim(input)
        c = input.shape[1]
        dims = [0, *range(2, input.dim())]
        shape = [1, c] + [1] * (input.dim() - 2)
        x = input.float()
        count = torch.full((1,), x.numel() // c, dtype=x.dtype, device=x.device)
        tot = _AllReduceSum.apply(torch.cat([x.sum(dims), count]))
        n = tot[c]
        mean = tot[:c] / n
        xc = x - mean.view(shape)
        var = _AllReduceSum.apply((xc * xc).sum(dims)) / n
        y = xc * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                f = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                     else self.momentum)
                self.running_mean.mul_(1 - f).add_(mean.detach(), alpha=f)
                unbiased = var.detach() * (n / (n - 1)).clamp_min(0)
                self.running_var.mul_(1 - f).add_(unbiased, alpha=f)
        return y.to(input.dtype)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every batch-norm layer synchronised over the process group (CUDA: torch's
    ``SyncBatchNorm``; CPU: :class:`CPUSyncBatchNorm`). Parameters and buffers are kept."""
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)

    def convert(module: nn.Module) -> nn.Module:
        if isinstance(module, _BatchNorm) and not isinstance(module, CPUSyncBatchNorm):
            new = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum,
                                   module.affine, module.track_running_stats)
            if module.affine:
                with torch.no_grad():
                    new.weight = module.weight
                    new.bias = module.bias
            new.running_mean = module.running_mean
            new.running_var = module.running_var
            new.num_batches_tracked = module.num_batches_tracked
            new.train(module.training)
            return new
        for name, child in module.named_children():
            module.add_module(name, convert(child))
        return module

    return convert(model)


def data_parallel(model: nn.Module, device: torch.device,
                  sync_bn: bool = True) -> tuple[nn.Module, nn.Module]:
    """(``model`` with batch norm synchronised over the process group, DDP around it): what
    ``fit`` trains in a K-process run. Checkpoints and evaluation use the first (no
    ``module.`` prefix in the keys), the training step calls the second. ``sync_bn=False``
    (a run with ``bn_group``): each rank normalises its own images, and DDP's buffer broadcast
    keeps rank 0's running statistics, as the paper's GPUs without synchronised BN did."""
    module = convert_sync_batchnorm(model, device) if sync_bn else model
    ids = [device.index] if device.type == "cuda" else None
    return module, nn.parallel.DistributedDataParallel(module, device_ids=ids)
