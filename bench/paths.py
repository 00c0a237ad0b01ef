"""Where the project lives, and how ``import datasets`` reaches *our* loaders.

Hugging Face's ``datasets`` package is installed in most ML environments, and our loaders
live in a top-level ``datasets/`` folder (the user's layout). We never install a top-level
``datasets`` into site-packages (that would shadow theirs for every other program), so the
project root is put first on ``sys.path`` by every entry point that runs our code: the CLI
(``run_benchmark.py`` sits in the root), pytest (``pythonpath = .`` in ``setup.cfg``) and Ray
workers (``runtime_env`` with the root on ``PYTHONPATH``). :func:`import_project_package`
checks the result, and if another ``datasets`` was imported first it loads ours by file path
(as benchopt loads its ``datasets/`` and ``solvers/``) under a private name, leaving theirs
untouched in ``sys.modules``.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def ensure_on_path() -> None:
    """Put the project root first on ``sys.path`` (idempotent)."""
    root = str(PROJECT_ROOT)
    if not sys.path or sys.path[0] != root:
        if root in sys.path:
            sys.path.remove(root)
        sys.path.insert(0, root)


def _is_ours(module, name: str) -> bool:
    origin = getattr(module, "__file__", None)
    return origin is not None and Path(origin).resolve().parent == (PROJECT_ROOT / name).resolve()


def import_project_package(name: str):
    """Import the project's own top-level package ``name`` ("methods" or "datasets")."""
    ensure_on_path()
    module = sys.modules.get(name)
    if module is not None and _is_ours(module, name):
        return module
    if module is None:
        module = importlib.import_module(name)
        if _is_ours(module, name):
            return module
    private = f"fairclusterbench_{name}"
    if private in sys.modules:
        return sys.modules[private]
    init = PROJECT_ROOT / name / "__init__.py"
    spec = importlib.util.spec_from_file_location(private, init, submodule_search_locations=[str(init.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[private] = module
    spec.loader.exec_module(module)
    return module


def default_data_dir() -> Path:
    """``$FAIRCLUSTERBENCH_DATA``, else ``~/.cache/fairclusterbench``."""
    env = os.environ.get("FAIRCLUSTERBENCH_DATA")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fairclusterbench"
