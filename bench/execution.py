"""How a cell is executed, as opposed to what it computes: settings that may change the
order of floating-point work but not the method, so they are recorded with each run (like
its device) and are not part of the cell's identity.

* ``cuda_graphs`` (``--cuda-graphs``, off by default, experimental): training loops that
  support it replay their step as a CUDA graph (:mod:`methods._step_graph`: FCMI's loop, so
  FCMI and AE, and DFC's three loops).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

__all__ = ["cuda_graphs", "settings"]

_CUDA_GRAPHS = False


def cuda_graphs() -> bool:
    """Whether the cell being run asked for CUDA-graph replay of its training step."""
    return _CUDA_GRAPHS


@contextlib.contextmanager
def settings(*, cuda_graphs: bool = False) -> Iterator[None]:
    """Apply execution settings for the duration of the block."""
    global _CUDA_GRAPHS
    previous, _CUDA_GRAPHS = _CUDA_GRAPHS, bool(cuda_graphs)
    try:
        yield
    finally:
        _CUDA_GRAPHS = previous
