"""Resumable cells: training state saved now and then, so that a cell stopped part-way (a
killed job, a lost machine, a time limit) goes on from where it stopped when the grid is run
again, instead of starting over.

The runner opens one :class:`Checkpoint` per cell
(``<out>/checkpoints/<dataset-key>/<method-key>/seed<k>.pt``), makes it current while the
method trains (:func:`active`) and deletes it once the cell's record is written. A training
loop asks :func:`current` for it and, for each named stage of its work, calls :meth:`~Checkpoint.load`
once at the start and :meth:`~Checkpoint.save` whenever :meth:`~Checkpoint.due` says so.
Outside the runner (tests, notebooks, a method called directly) the current checkpoint is a
disabled one: ``load`` returns None and ``due`` is False, so loops need no special case.

A file belongs to one cell: the cell's id (method, parameters, dataset, seed, versions) is
stored in it, and a file written for another configuration is ignored. Resuming is exact on
the CPU: a loop saves everything its remaining steps depend on (weights, optimiser state,
random generators, history), and the tests compare stopped-and-resumed runs with
uninterrupted ones label for label.
"""
from __future__ import annotations

import contextlib
import io
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from .store import atomic_write_bytes, remove_partial_writes

__all__ = ["Checkpoint", "current", "active", "discard", "rng_state", "set_rng_state", "to_cpu"]


class Checkpoint:
    """The saved stages of one cell. ``every_s``: least seconds between two saves."""

    def __init__(self, path: Optional[Path] = None, cell_id: str = "", every_s: float = 300.0):
        self.path = Path(path) if path is not None else None
        self.cell_id = cell_id
        self.every_s = float(every_s)
        self._stages: Optional[dict] = None
        self._prior_seconds = 0.0
        self._started = self._last_save = time.monotonic()
        self.saves = 0

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def _read(self) -> dict:
        if self._stages is None:
            self._stages = {}
            if self.enabled and self.path.exists():
                try:
                    saved = torch.load(self.path, map_location="cpu", weights_only=False)
                except Exception:  # noqa: BLE001 - a damaged file means starting over, not failing
                    saved = {}
                if isinstance(saved, dict) and saved.get("cell_id") == self.cell_id:
                    self._stages = dict(saved.get("stages", {}))
                    self._prior_seconds = float(saved.get("seconds", 0.0))
        return self._stages

    @property
    def prior_seconds(self) -> float:
        """Training seconds of earlier attempts, up to their last save (0 for a fresh cell)."""
        self._read()
        return self._prior_seconds

    def load(self, stage: str) -> Optional[dict]:
        """The state last saved for ``stage`` by this cell, or None (start the stage afresh)."""
        return self._read().get(stage) if self.enabled else None

    def due(self) -> bool:
        """True when a save is wanted now (enabled and ``every_s`` passed since the last)."""
        return self.enabled and time.monotonic() - self._last_save >= self.every_s

    def save(self, stage: str, state: dict) -> None:
        """Store ``state`` (tensors are copied to the CPU) as ``stage``; write the file atomically."""
        if not self.enabled:
            return
        stages = self._read()
        stages[stage] = to_cpu(state)
        buf = io.BytesIO()
        seconds = self.prior_seconds + time.monotonic() - self._started
        torch.save({"cell_id": self.cell_id, "stages": stages, "seconds": seconds}, buf)
        atomic_write_bytes(self.path, buf.getvalue())
        self._last_save = time.monotonic()
        self.saves += 1

    def clear(self) -> None:
        """Forget every stage and delete the file (:func:`discard`)."""
        self._stages = {}
        if self.enabled:
            discard(self.path)


def discard(path: Path) -> None:
    """Delete a checkpoint file and any half-written copy of it (a job killed while saving
    leaves one), then its method and dataset folders once they are empty."""
    path = Path(path)
    remove_partial_writes(path)
    if not path.parent.exists():
        return
    path.unlink(missing_ok=True)
    for folder in (path.parent, path.parent.parent):
        try:
            folder.rmdir()
        except OSError:
            break


_DISABLED = Checkpoint()
_current: Checkpoint = _DISABLED


def current() -> Checkpoint:
    """The checkpoint of the cell being trained (a disabled one outside the runner)."""
    return _current


@contextlib.contextmanager
def active(checkpoint: Checkpoint) -> Iterator[Checkpoint]:
    """Make ``checkpoint`` current for the duration of the block."""
    global _current
    previous, _current = _current, checkpoint
    try:
        yield checkpoint
    finally:
        _current = previous


def to_cpu(obj: Any) -> Any:
    """A copy of ``obj`` with every tensor detached and on the CPU (dicts, lists, tuples)."""
    if torch.is_tensor(obj):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def rng_state(device) -> dict:
    """torch's global generator states: the CPU one and, on CUDA, the device's."""
    device = torch.device(device)
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device) -> None:
    device = torch.device(device)
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
