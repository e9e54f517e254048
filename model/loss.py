"""CLIP's contrastive loss: symmetric cross-entropy over the batch's similarity matrix.

For a global batch of N pairs with unit-norm features I, T and scale s, logits = s * I @ T^T
and the loss is the mean of cross-entropy over rows (image -> text) and over columns
(text -> image), with the matching pair on the diagonal:

    L = (CE(logits, arange(N)) + CE(logits^T, arange(N))) / 2

Under DDP (torch.distributed initialised, world size W > 1, every rank holding n = N / W
pairs; the trainer must keep local batches equal, e.g. drop_last=True) the features are
all-gathered so every rank contrasts against the global batch. Gradient convention, the same in
both modes below: on every rank the gradient that reaches the local features is W * dL/dx, so
that after DDP's mean over ranks every parameter's gradient equals dL/dtheta, the gradient of
the global-batch mean loss, exactly as one process with the whole batch would compute it
(whatever W, which keeps gradient clipping and learning rates comparable across world sizes).

local_loss=False (default): the gather carries no gradient; each rank puts its own tensors back
in their slot (with the W gradient factor) and computes the full N x N logits. The loss value
on every rank is L itself. Memory: N x N logits per rank.

local_loss=True (open_clip's option): each rank computes only its own n rows in each direction,
n x N logits; labels are offset by rank * n. The loss value on a rank is the mean over its own
rows; the mean over ranks is L (all-reduce it for logging). The other ranks' rows also depend on
this rank's features (as columns), so here the gather must carry gradient: its backward sums
the gathered slot's gradient over ranks, one all-reduce of N x embed_dim in backward.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _rank_and_world_size() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_gather_no_grad(features: torch.Tensor, world_size: int) -> list[torch.Tensor]:
    parts = [torch.empty_like(features) for _ in range(world_size)]
    dist.all_gather(parts, features.detach().contiguous())
    return parts


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; multiplies the gradient by `factor` in backward."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.factor, None


class _AllGatherSummingGradients(torch.autograd.Function):
    """all_gather whose backward sums, over ranks, the gradient each rank computed for this
    rank's slot (all_reduce rather than reduce_scatter, which gloo lacks)."""

    @staticmethod
    def forward(ctx, features: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
        ctx.rank, ctx.rows = rank, features.shape[0]
        return torch.cat(_all_gather_no_grad(features, world_size))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows], None, None


def gather_features(features: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """[n, d] local -> [W * n, d] global in rank order; gradient reaches only the local slot
    (times W, see the module docstring)."""
    parts = _all_gather_no_grad(features, world_size)
    parts[rank] = _ScaleGradient.apply(features, float(world_size))
    return torch.cat(parts)


class ClipLoss(nn.Module):
    def __init__(self, local_loss: bool = False, cache_labels: bool = True):
        super().__init__()
        self.local_loss = local_loss
        self.cache_labels = cache_labels
        self._labels: dict[tuple[torch.device, int, int], torch.Tensor] = {}

    def labels(self, rows: int, offset: int, device: torch.device) -> torch.Tensor:
        """The matching column of each row: offset, offset + 1, ... (cached per device/shape)."""
        key = (device, rows, offset)
        labels = self._labels.get(key)
        if labels is None:
            labels = torch.arange(offset, offset + rows, device=device)
            if self.cache_labels:
                self._labels[key] = labels
        return labels

    def forward(
        self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor
    ) -> torch.Tensor:
        """Unit-norm [n, d] image and text features of this rank's pairs and the (exp'd,
        clamped) logit scale -> scalar loss (see the module docstring for the DDP convention)."""
        rank, world_size = _rank_and_world_size()
        rows = image_features.shape[0]
        if world_size == 1:
            logits_per_image = logit_scale * image_features @ text_features.T
            logits_per_text = logits_per_image.T
            labels = self.labels(rows, 0, image_features.device)
        elif self.local_loss:
            all_images = _AllGatherSummingGradients.apply(image_features, rank, world_size)
            all_texts = _AllGatherSummingGradients.apply(text_features, rank, world_size)
            logits_per_image = logit_scale * image_features @ all_texts.T
            logits_per_text = logit_scale * text_features @ all_images.T
            labels = self.labels(rows, rank * rows, image_features.device)
        else:
            all_images = gather_features(image_features, rank, world_size)
            all_texts = gather_features(text_features, rank, world_size)
            logits_per_image = logit_scale * all_images @ all_texts.T
            logits_per_text = logits_per_image.T
            labels = self.labels(rows * world_size, 0, image_features.device)
        return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
