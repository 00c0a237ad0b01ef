"""Shared test helpers: run the CLI in a subprocess like a user would; load a benchmark script."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = ROOT / "tests" / "fixtures" / "outside_plugin.py"


def cli(*args, env=None, cwd=None, timeout=240):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / "run_benchmark.py"), *map(str, args)], capture_output=True,
                          text=True, env=full_env, cwd=cwd or ROOT, timeout=timeout)


def benchmark_script(name: str):
    """The module ``benchmarks/<name>.py``, loaded by file path (``benchmarks/`` is no package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
