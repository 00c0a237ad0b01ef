"""The numbers the papers report, kept as data with the source of each one.

``bench/data/paper_results.csv`` (from ``shared/reference/paper_results.csv``): one row per
(dataset, method, metric, where it was reported), values in percent. FCMI's Table 1 re-ran
DFC, so DFC has two rows per metric (FCMI's re-run and DFC's own paper): both are kept.
Methods and datasets point at these rows through their ``paper_name`` attribute.
"""
from __future__ import annotations

import functools
from pathlib import Path

import pandas as pd

PAPER_RESULTS = Path(__file__).parent / "data" / "paper_results.csv"
#: What we found where our numbers differ from a paper's: (dataset, method, note), written by
#: whoever investigated; the leaderboard prints them under the comparison table.
PAPER_NOTES = Path(__file__).parent / "data" / "paper_notes.csv"
#: paper metric name -> our metric key
METRIC_KEYS = {"acc": "acc", "nmi": "nmi", "balance": "balance", "mnce": "mnce", "f": "f1"}


@functools.lru_cache(maxsize=1)
def paper_results() -> pd.DataFrame:
    df = pd.read_csv(PAPER_RESULTS)
    df["metric_key"] = df["metric"].map(METRIC_KEYS)
    return df


def reported(dataset_paper_name: str, method_paper_name: str) -> pd.DataFrame:
    """Rows reported for one (dataset, method), possibly from several sources."""
    if not dataset_paper_name or not method_paper_name:
        return paper_results().iloc[0:0]
    df = paper_results()
    return df[(df["dataset"] == dataset_paper_name) & (df["method"] == method_paper_name)]


@functools.lru_cache(maxsize=1)
def _notes() -> pd.DataFrame:
    if not PAPER_NOTES.is_file():
        return pd.DataFrame(columns=["dataset", "method", "note"])
    return pd.read_csv(PAPER_NOTES, dtype=str)


def notes(dataset_paper_name: str, method_paper_name: str) -> list[str]:
    """Our explanations of the differences for one (dataset, method), in file order."""
    df = _notes()
    return df[(df["dataset"] == dataset_paper_name) & (df["method"] == method_paper_name)]["note"].tolist()
