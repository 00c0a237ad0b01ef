"""What produced a result: library versions, device and git commit."""
from __future__ import annotations

import functools
import os
import platform
import subprocess
from importlib import metadata

import torch

from .paths import PROJECT_ROOT

LIBRARIES = ("torch", "numpy", "scipy", "scikit-learn", "faiss-cpu", "faiss-gpu", "pandas")


@functools.lru_cache(maxsize=1)
def library_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


# What the runner itself writes into the tree: changes there are results, not code, and must
# not mark the runs that follow as made by modified code.
OUTPUTS = ("results", "leaderboard.md")


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """HEAD's commit, with "+dirty" when tracked files other than the outputs (``results/``,
    ``leaderboard.md``) differ from it; "unknown" outside git. Without that exclusion every run
    after a report into the default ``results/`` was marked "+dirty", code unchanged.
    A copy of the tree shipped to another machine (a GPU or Ray node, whose ``.git`` may be
    missing or stale) sets ``$FAIRCLUSTERBENCH_GIT_COMMIT``, which then takes precedence."""
    shipped = os.environ.get("FAIRCLUSTERBENCH_GIT_COMMIT", "").strip()
    if shipped:
        return shipped
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
             *(f":(exclude){path}" for path in OUTPUTS)],
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"
