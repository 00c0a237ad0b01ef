"""FCMI's training step as a CUDA graph (opt-in and experimental: ``--cuda-graphs``,
:mod:`bench.execution`; the capture itself is :class:`methods._step_graph.CapturedStep`).
Same loss, same batches, same Adam: only the way the GPU is driven changes. The step of these
small networks launches hundreds of small kernels; replaying them as one graph removes the
launch and Python overhead (what that gains is to be measured on a GPU).

A graph needs fixed shapes, so the group decoders cannot take per-group slices whose sizes
change every batch. Instead every decoder runs on the whole batch and each row keeps the
output of its own group's decoder (:func:`masked_decode`): the same reconstructions and the
same gradients (a decoder receives gradient only through the rows of its group), at the cost
of running G decoders on B rows instead of on their own rows. With BatchNorm in the group
decoders (FCMI's MLP) whole-batch decoding would change the normalisation statistics, so
there the loop stays eager (:func:`graph_supported`).
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["masked_decode", "graph_supported"]


def masked_decode(model, h: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Reconstruction of every row by its group's decoder, with every decoder run on all rows
    (fixed shapes, no host synchronisation); rows in any order."""
    hidden = model.decoder_shared(h)
    out = None
    for k, decoder in enumerate(model.group_decoders):
        y = decoder(hidden)
        if out is None:
            out = y
        else:
            mask = (groups == k).view(-1, *([1] * (y.dim() - 1)))
            out = torch.where(mask, y, out)
    return out.reshape(h.shape[0], *model.input_shape)


def graph_supported(model, device: torch.device, penalty_is_fcmi_or_none: bool) -> bool:
    """CUDA, FCMI's own fairness term (or none), and decoders that whole-batch decoding leaves
    unchanged: one decoder, or group decoders without BatchNorm (FCMI's conv net)."""
    if device.type != "cuda" or not penalty_is_fcmi_or_none:
        return False
    if not all(hasattr(model, a) for a in ("decoder_shared", "group_decoders", "input_shape")):
        return False
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.group_decoders.modules())
    return len(model.group_decoders) == 1 or not has_bn
