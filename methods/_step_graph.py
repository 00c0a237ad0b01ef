"""A training step replayed as a CUDA graph (the opt-in ``--cuda-graphs`` execution setting,
:mod:`bench.execution`). Used by FCMI's loop (:mod:`methods._fcmi_graph`) and DFC's three
loops.

The step's ``body`` reads its inputs from fixed buffers (batch indices, schedule values) that
the loop fills before each call, and runs forward, ``backward`` and the optimiser step. With
``capture=False`` (the CPU, or graphs not asked for) :meth:`CapturedStep.run` simply zeroes
the gradients and calls it: the plain eager step, which is what the CPU tests exercise. With
``capture=True`` the first call warms the step up on a side stream (PyTorch's whole-network
capture recipe), puts back the training state the warm-up changed, captures one call of the
body and replays it from then on: one launch per step instead of hundreds, and, the shapes
being fixed, cuDNN may time its convolution kernels and keep the fastest.

On a GPU a graphed run is not bit-for-bit the eager one: the warm-up draws from the CUDA
generator, autotuning may pick other kernels, and sums may be ordered differently. It is an
execution setting, recorded with each run, like the device.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
from torch import nn

__all__ = ["CapturedStep"]

WARMUP_STEPS = 3


class CapturedStep:
    """``body()`` as one CUDA graph. ``modules``, ``optimiser`` and ``accumulators`` (tensors
    the body adds to) are the state the warm-up changes and the capture restores."""

    def __init__(self, body: Callable[[], None], modules: Iterable[nn.Module], optimiser: torch.optim.Optimizer,
                 accumulators: Sequence[torch.Tensor] = (), capture: bool = False):
        self.body, self.modules, self.optimiser = body, [m for m in modules if m is not None], optimiser
        self.accumulators, self.capture = list(accumulators), bool(capture)
        self.graph = None

    def run(self) -> None:
        if not self.capture:
            self.optimiser.zero_grad(set_to_none=True)
            self.body()
            return
        if self.graph is None:
            cudnn = torch.backends.cudnn
            with cudnn.flags(enabled=True, benchmark=True, deterministic=cudnn.deterministic,
                             allow_tf32=cudnn.allow_tf32):
                self._capture()
        self.graph.replay()

    def _state_tensors(self) -> list:
        tensors = [p.data for m in self.modules for p in m.parameters()]
        tensors += [b for m in self.modules for b in m.buffers()] + self.accumulators
        return tensors + [t for s in self.optimiser.state.values() for t in s.values() if torch.is_tensor(t)]

    def _capture(self) -> None:
        fresh_optimiser = not self.optimiser.state
        saved = [(t, t.detach().clone()) for t in self._state_tensors()]
        device = next(iter(saved))[0].device
        stream = torch.cuda.Stream(device=device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(WARMUP_STEPS):
                self.optimiser.zero_grad(set_to_none=True)
                self.body()
        torch.cuda.current_stream(device).wait_stream(stream)
        with torch.no_grad():
            for t, copy in saved:
                t.copy_(copy)
            if fresh_optimiser:  # the warm-up created the optimiser's state: a fresh one is all zeros
                for s in self.optimiser.state.values():
                    for t in s.values():
                        if torch.is_tensor(t):
                            t.zero_()
        self.optimiser.zero_grad(set_to_none=True)  # gradients are then allocated by the capture
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.body()
