#!/usr/bin/env python
"""FairClusterBench command line. ``python run_benchmark.py --help``; no arguments runs the quick suite."""
import os
import sys

# OpenMP threads of torch and faiss busy-wait by default; on a few shared cores that costs
# up to 10x. Must be set before either library loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from bench.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
