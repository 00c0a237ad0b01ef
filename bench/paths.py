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
import tempfile
from pathlib import Path
from typing import Callable

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


def _process_umask() -> int:
    """The umask, read without changing it where Linux reports it (os.umask can only set it,
    and setting it even briefly would apply to files other threads create meanwhile)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_file_beside(path: Path, suffix: str = ".tmp") -> tuple[int, str]:
    """``(fd, name)`` of a new temporary file in ``path``'s folder, to be renamed onto ``path``.

    ``tempfile.mkstemp`` creates it readable by its owner only (0600), and the rename keeps
    that; here it gets the mode ``open()`` would have given ``path`` (0666 minus the umask), so
    records, downloads and caches in a shared folder stay readable to the group as usual."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        os.fchmod(fd, 0o666 & ~_process_umask())
    except OSError:
        pass  # a file system without permission bits: nothing to honour
    return fd, name


def write_atomically(path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a new file beside ``path``, flush it to disk, then rename it onto
    ``path``: readers see the old file or the whole new one, never a part, even after a kill
    or a power cut. The temporary file is removed if ``write`` raises. Serves every writer of
    records, checkpoints and dataset caches (downloads stream through
    :func:`temp_file_beside` themselves)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file_beside(path)
    os.close(fd)
    try:
        write(Path(tmp))
        fd = os.open(tmp, os.O_RDWR)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
