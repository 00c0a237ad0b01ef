"""Seeds and devices."""
from __future__ import annotations

import random

import numpy as np
import torch


class DeviceError(ValueError):
    pass


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) for one run cell."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def check_device_form(spec: str) -> None:
    """Raise :class:`DeviceError` unless ``spec`` names a device in an accepted form (auto, cpu,
    cuda, cuda:N), without asking whether it is there: a run for a GPU can be planned
    (``--dry-run``) on a machine without one."""
    spec = (spec or "auto").strip().lower()
    index = spec.partition(":")[2]
    if spec in ("auto", "cpu", "cuda") or (spec.startswith("cuda:") and index.isdigit()):
        return
    raise DeviceError(f"unknown device {spec!r}; accepted: auto, cpu, cuda, cuda:N")


def resolve_device(spec: str = "auto") -> torch.device:
    """"auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N"; a device that is
    not there raises :class:`DeviceError` with a one-line message."""
    spec = (spec or "auto").strip().lower()
    n_gpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
    accepted = "auto, cpu" + (", cuda" + "".join(f", cuda:{i}" for i in range(n_gpu)) if n_gpu else "")
    if spec == "auto":
        return torch.device("cuda" if n_gpu else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        index = spec.partition(":")[2]
        if not n_gpu:
            raise DeviceError(f"device {spec!r} is not available (no CUDA GPU found); accepted: {accepted}")
        if index and (not index.isdigit() or int(index) >= n_gpu):
            raise DeviceError(f"device {spec!r} is not available; accepted: {accepted}")
        return torch.device(spec)
    raise DeviceError(f"unknown device {spec!r}; accepted: {accepted}")
