"""What the scripts in ``benchmarks/`` share with ``run_benchmark.py``: bad input reported as
one line on stderr with exit code 2, and the loading behind their ``--dataset`` and
``--data-dir`` options."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from . import registry
from .api import LabelledData
from .paths import default_data_dir


def fail(message: str) -> NoReturn:
    """Bad input: ``error: <message>`` on stderr, exit code 2 (as ``run_benchmark.py``)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def add_dataset_arguments(parser: argparse.ArgumentParser, default: str, help: str) -> None:
    """``--dataset NAME`` (default ``default``) and ``--data-dir DIR``."""
    parser.add_argument("--dataset", default=default, help=help)
    parser.add_argument("--data-dir", default=None, help="data folder (default: $FAIRCLUSTERBENCH_DATA or the cache)")


def load_dataset(name: str, data_dir: str | Path | None = None) -> LabelledData:
    """The registered dataset ``name`` from ``data_dir`` (default: :func:`default_data_dir`);
    an unknown name, a bad dataset parameter or missing or unreadable files end the script
    through :func:`fail`."""
    try:
        return registry.datasets.get(name)().load(Path(data_dir) if data_dir else default_data_dir())
    except (KeyError, ValueError, OSError) as exc:
        fail(str(exc).strip("'\""))
