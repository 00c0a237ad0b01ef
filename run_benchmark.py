#!/usr/bin/env python
"""FairClusterBench command line. ``python run_benchmark.py --help``; no arguments runs the quick suite."""
import sys

from bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
