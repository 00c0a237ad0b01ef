"""FCMI's training step captured once as a CUDA graph and replayed for every batch (opt-in and
experimental: ``--cuda-graphs``, :mod:`bench.execution`). Same loss, same batches, same Adam: only the way the GPU is driven
changes. The step of these small networks is bound by kernel launches and Python, not by
arithmetic, so replaying one graph per batch is where the time goes down.

A graph needs fixed shapes, so the group decoders cannot take per-group slices whose sizes
change every batch. Instead every decoder runs on the whole batch and each row keeps the
output of its own group's decoder (:func:`masked_decode`): the same reconstructions and the
same gradients (a decoder receives gradient only through the rows of its group), at the cost
of running G decoders on B rows instead of on their own rows. With BatchNorm in the group
decoders (FCMI's MLP) whole-batch decoding would change the normalisation statistics, so
there the loop stays eager (:func:`graph_supported`).

Capturing needs a few warm-up steps; they run on a copy of the training state, which is put
back in place before the capture, so the trajectory is the eager one's (up to the order of
floating-point sums). The warm-up also lets cuDNN time its convolution kernels for the fixed
shapes and keep the fastest: an autotuner's choice may differ between runs, so graphed runs
on a GPU need not repeat bit for bit (they are an execution setting, recorded with the run).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["masked_decode", "graph_supported", "GraphedStep"]

WARMUP_STEPS = 3  # PyTorch's whole-network capture recipe warms up on a side stream first


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


class GraphedStep:
    """One training step of :func:`methods._fcmi_loop.train_fcmi_style` as a CUDA graph.

    ``loss_terms(x, g)`` is the loop's step body up to the loss: it returns the stacked
    logged terms, the loss first. The graph runs it, ``backward`` and the optimiser step, and
    adds the terms to ``sums``. The batch's rows are read from a fixed index buffer that
    :meth:`run` fills before each replay."""

    def __init__(self, model: nn.Module, optimiser: torch.optim.Optimizer, X: torch.Tensor, groups: torch.Tensor,
                 batch_size: int, loss_terms, sums: torch.Tensor):
        self.model, self.optimiser, self.X, self.groups = model, optimiser, X, groups
        self.loss_terms, self.sums = loss_terms, sums
        self.index = torch.zeros(batch_size, dtype=torch.long, device=X.device)
        self.graph = None

    def _body(self):
        idx = self.index
        terms = self.loss_terms(self.X[idx], self.groups[idx])
        terms[0].backward()
        self.optimiser.step()
        self.sums += terms.detach()

    def _state_tensors(self):
        """Every tensor a step changes: weights, buffers, the Adam state, the sums."""
        tensors = [p.data for p in self.model.parameters()] + list(self.model.buffers()) + [self.sums]
        return tensors + [t for s in self.optimiser.state.values() for t in s.values() if torch.is_tensor(t)]

    def capture(self):
        """Warm up on a side stream, put the training state back in place, capture the step.

        Fixed shapes make cuDNN's autotuning worth it: the warm-up times the convolution
        kernels and the capture records the fastest (the eager loop cannot: its group slices
        change size every batch)."""
        cudnn = torch.backends.cudnn
        with cudnn.flags(enabled=True, benchmark=True, deterministic=cudnn.deterministic, allow_tf32=cudnn.allow_tf32):
            self._capture()

    def _capture(self):
        fresh_optimiser = not self.optimiser.state
        saved = [(t, t.detach().clone()) for t in self._state_tensors()]
        self.index.copy_(torch.arange(self.index.numel(), device=self.index.device) % self.X.shape[0])
        device = self.X.device
        stream = torch.cuda.Stream(device=device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(WARMUP_STEPS):
                self.optimiser.zero_grad(set_to_none=True)
                self._body()
        torch.cuda.current_stream(device).wait_stream(stream)
        with torch.no_grad():
            for t, copy in saved:
                t.copy_(copy)
            if fresh_optimiser:  # the warm-up created Adam's state: a fresh Adam's is all zeros
                for s in self.optimiser.state.values():
                    for t in s.values():
                        if torch.is_tensor(t):
                            t.zero_()
        self.optimiser.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._body()

    def run(self, index: torch.Tensor) -> None:
        """One step on the rows ``index`` (a device tensor of ``batch_size`` indices)."""
        if self.graph is None:
            self.capture()
        self.index.copy_(index)
        self.graph.replay()
