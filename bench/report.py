"""Leaderboard and figures, built from the stored records alone (nothing is trained).

The same records always give the same ``leaderboard.md`` byte for byte: rows and columns are
sorted, and no time stamp is written.
"""
from __future__ import annotations

import os
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from . import papers, registry
from .metrics import HEADLINE
from .registry import UnknownName
from .runner import Spec
from .store import own_key

PERCENT = {"acc", "nmi", "ari", "balance", "ratio_balance", "mnce", "f1"}


def _scale(key: str) -> float:
    base = key.split("[")[0].split(":")[-1]  # "acc", "mnce[joint]", a stage's "warmup:acc"
    return 100.0 if base in PERCENT or base == "balance_worst" else 1.0


def current_label(kind: str, stored: dict) -> str:
    """The label of a stored configuration against today's declared defaults: a parameter
    whose default changed after the run shows its stored value (e.g. ``resize=bilinear``), so
    an old record never passes for today's default. The stored label when the name is not
    registered (a plugin that is not loaded)."""
    try:
        return Spec.from_json(kind, stored).label
    except UnknownName:
        return stored["label"]


def records_frame(records: list[dict], clusters_used: dict | None = None) -> pd.DataFrame:
    """One row per record. ``clusters_used``: the number of distinct labels of each finished
    run, keyed by :func:`_run_key` (read from the stored labels by :func:`build_report`)."""
    rows = []
    clusters_used = clusters_used or {}
    for r in records:
        row = {"dataset_key": r["dataset"]["key"], "dataset": current_label("dataset", r["dataset"]),
               "dataset_name": r["dataset"]["name"],
               "method_key": own_key(r["method"]["name"], r["method"]["params"], r["method"].get("version", "1")),
               "method": current_label("method", r["method"]), "method_name": r["method"]["name"],
               "method_folder": r["method"].get("key", ""),
               "before": ", ".join(_declared_but_not_stored(r["method"])),
               "method_params": r["method"]["params"], "seed": r["seed"], "status": r["status"],
               "error": r.get("error", ""), "train_seconds": r.get("train_seconds", np.nan),
               "device": short_device(r.get("device", ""), r.get("jobs", 1)),
               "soft_entropy_ratio": soft_entropy_ratio(r), "n_clusters": r.get("n_clusters", np.nan),
               "clusters_used": clusters_used.get(_run_key(r), np.nan), **fairness_cost(r)}
        for k, v in (r.get("metrics") or {}).items():
            row["m:" + k] = v
        for stage, metrics in (r.get("stages") or {}).items():
            for k in STAGE_METRICS:
                row[f"m:{stage}:{k}"] = metrics.get(k, np.nan)
        rows.append(row)
    return _tell_apart(pd.DataFrame(rows), records)


def _declared_but_not_stored(stored: dict) -> list[str]:
    """Parameters the method declares today that a record's configuration lacks (it was made
    before they existed)."""
    try:
        declared = registry.methods.get(stored["name"]).parameters
    except UnknownName:
        return []
    return sorted(set(declared) - set(stored["params"]))


def _tell_apart(df: pd.DataFrame, records: list[dict]) -> pd.DataFrame:
    """Rows that must not pass for today's default configuration get a bracket.

    * A record made by an older ``version`` of the method (a version bump says the results
      changed) always reads ``name [version=<old>]``, whether or not today's version has run.
    * A record made before a parameter existed (its label cannot name a value it never had)
      keeps today's label while it is alone, and reads ``name [before <parameter>]`` once
      today's default has run too (the README's one exception to row names; the overview
      marks such a cell with †).

    Either bracket also keeps the row out of the overview and the comparison with the papers."""
    df["mark"] = ""  # the bracket added here, kept for the figures' series (:func:`_sweep_series`)
    if df.empty:
        return df
    stale = pd.Series([_older_version(r["method"]) for r in records], index=df.index)
    old = stale != ""
    df.loc[old, "mark"] = [f"version={v}" for v in stale[old]]
    df.loc[old, "before"] = ""  # the version already says the record is not today's
    missing = pd.Series([", ".join(_declared_but_not_stored(r["method"])) for r in records], index=df.index)
    clash = df.groupby(["dataset_key", "method"]).method_key.transform("nunique") > 1
    older = clash & (missing != "") & ~old
    df.loc[older, "mark"] = [f"before {x}" for x in missing[older]]
    marked = df.mark != ""
    df.loc[marked, "method"] = [_with_mark(m, x) for m, x in zip(df.method[marked], df.mark[marked])]
    return df


def _with_mark(label: str, mark: str) -> str:
    """``label`` with ``mark`` added inside its bracket: ``fcmi [epochs=50]`` and
    ``version=1`` give ``fcmi [epochs=50, version=1]``."""
    if not mark:
        return label
    return f"{label[:-1]}, {mark}]" if label.endswith("]") else f"{label} [{mark}]"


def _older_version(stored: dict) -> str:
    """The stored method version when it is not today's, else ""."""
    try:
        current = registry.methods.get(stored["name"]).version
    except UnknownName:
        return ""
    version = str(stored.get("version", "1"))
    return version if version != current else ""


#: Final H(C|X) at or above this share of log K marks a run's soft assignments as collapsed.
COLLAPSE_RATIO = 0.9


def soft_entropy_ratio(record: dict) -> float:
    """H(C|X) / log K at the last epoch, for methods whose history logs ``h_c_given_x`` (the
    mean entropy of the soft assignments, FCMI's loop: FCMI, IFC, infomin); NaN otherwise."""
    history = record.get("history") or []
    k = record.get("n_clusters") or 0
    if not history or "h_c_given_x" not in history[-1] or k < 2:
        return float("nan")
    return float(history[-1]["h_c_given_x"]) / float(np.log(k))


def collapse_notes(df: pd.DataFrame) -> list[str]:
    """One line per configuration with runs whose soft assignments ended near-uniform: the
    soft fairness terms are then met trivially while the hard clustering may still follow
    the groups (the collapse described in :class:`methods.ifc.IFC`). ``df``: a
    :func:`records_frame`, which always has the ``soft_entropy_ratio`` column."""
    hit = df[(df.status == "ok") & (df.soft_entropy_ratio >= COLLAPSE_RATIO)]
    lines = []
    for method, runs in sorted(hit.groupby("method"), key=lambda kv: kv[0]):
        runs = runs.sort_values("seed")
        seeds = ", ".join(f"{int(s)} ({v:.2f})" for s, v in zip(runs.seed, runs.soft_entropy_ratio))
        lines.append(f"- {method}: {'seeds' if len(runs) > 1 else 'seed'} {seeds}")
    return lines


def _run_key(record: dict) -> tuple:
    return record["dataset"]["key"], record["method"]["key"], record["seed"]


def count_clusters_used(store, records: list[dict]) -> dict:
    """Distinct labels of each finished run with stored labels, keyed by :func:`_run_key`."""
    used = {}
    for r in records:
        if r.get("status") == "ok" and r.get("labels_file"):
            try:
                used[_run_key(r)] = int(np.unique(store.labels(r)).size)
            except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):  # missing or damaged
                continue
    return used


def empty_cluster_notes(df: pd.DataFrame) -> list[str]:
    """One line per configuration with runs whose labels leave some of the K clusters empty
    (e.g. a DEC run on a dead autoencoder that puts every sample in one cluster): such a
    run's fairness and accuracy are those of a degenerate partition, not of K clusters."""
    hit = df[(df.status == "ok") & (df.clusters_used < df.n_clusters)]
    lines = []
    for method, runs in sorted(hit.groupby("method"), key=lambda kv: kv[0]):
        runs = runs.sort_values("seed")
        seeds = ", ".join(f"{int(s)} ({int(u)} of {int(k)})" for s, u, k in
                          zip(runs.seed, runs.clusters_used, runs.n_clusters))
        lines.append(f"- {method}: {'seeds' if len(runs) > 1 else 'seed'} {seeds}")
    return lines


def fairness_cost(record: dict) -> dict:
    """Cost of a run's fairness term, from the history rows that time it (infomin-*, ifc:
    :class:`methods._multi_attr.StepRecorder`): mean milliseconds per fairness step (estimator
    max-step + penalty forward), of which the estimator's max-step (``fair_fit_s``, the
    infomin paper's axis; absent for terms without one), and mean seconds per such epoch.
    Also what the term read in the last epoch (``fair``: the penalty D̂, batch mean) beside the
    exact plug-in I(Q;G) of the same batches (``mi_cg``): an estimator that reads ~0 while
    I(Q;G) stays high is fooled by the encoder, not satisfied (an adversarial critic lagging
    behind it). Empty for methods that do not time their fairness term."""
    rows = [h for h in record.get("history") or [] if "fair_step_s" in h]
    if not rows:
        return {}
    out = {"m:fair_step_ms": 1000.0 * float(np.mean([h["fair_step_s"] for h in rows])),
           "m:fair_epoch_s": float(np.mean([h["time_s"] for h in rows if "time_s" in h] or [np.nan]))}
    fits = [h["fair_fit_s"] for h in rows if "fair_fit_s" in h]
    if fits:
        out["m:fair_fit_ms"] = 1000.0 * float(np.mean(fits))
    for key in ("fair", "mi_cg"):
        if key in rows[-1]:
            out[f"m:{key}_last"] = float(rows[-1][key])
    return out


#: What the intermediate-stage table shows (a stage scored like the final labels).
STAGE_METRICS = ("acc", "nmi", "balance", "mnce")


def short_device(name: str, jobs: int = 1) -> str:
    """"CPU" for CPU records, else the GPU model without the vendor ("H100" for "NVIDIA H100
    80GB HBM3"), followed by "×N" when N cells ran side by side on the machine (``--jobs``):
    train times are only comparable within one device and load. Records from before the
    runner kept ``jobs`` show the device alone."""
    if not name:
        return "?"
    if name.lower().startswith("cpu"):
        short = "CPU"
    else:
        words = [w for w in name.split() if w.upper() not in ("NVIDIA", "GEFORCE", "TESLA", "AMD", "RADEON")]
        short = words[0] if words else name
    return f"{short} ×{int(jobs)}" if jobs and int(jobs) > 1 else short


def _fmt(mean, std, n, digits=1):
    if n == 0 or not np.isfinite(mean):
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


def _summary(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per method configuration: mean and sample std (ddof=1) over the seeds that finished;
    rows in order of their labels (a sweep's configurations side by side, by value)."""
    ok = df[df.status == "ok"]
    out = []
    groups = sorted(df.groupby("method_key", sort=True), key=lambda kv: (kv[1]["method"].iloc[0], kv[0]))
    for mkey, g in groups:
        gok = ok[ok.method_key == mkey]
        row = {"method_key": mkey, "method": g["method"].iloc[0], "method_name": g["method_name"].iloc[0],
               "params": g["method_params"].iloc[0], "mark": g["mark"].iloc[0],
               "n_ok": len(gok),
               "n_failed": int((g.status == "failed").sum()), "n_na": int((g.status == "not_applicable").sum()),
               "seeds": sorted(gok.seed.tolist()), "errors": sorted(set(g[g.status != "ok"].error))}
        for k in keys:
            col = "m:" + k
            vals = gok[col].to_numpy(float) * _scale(k) if col in gok else np.array([])
            vals = vals[~np.isnan(vals)]  # a run without this value (e.g. no such stage) does not count
            row[k] = (vals.mean() if len(vals) else np.nan, vals.std(ddof=1) if len(vals) > 1 else 0.0, len(vals))
        t = gok["train_seconds"].to_numpy(float)
        row["time"] = (t.mean() if len(t) else np.nan, t.std(ddof=1) if len(t) > 1 else 0.0, len(t))
        row["device"] = "/".join(sorted(set(gok["device"])))
        out.append(row)
    return pd.DataFrame(out)


def _bold_best(summary: pd.DataFrame, keys: list[str]) -> dict:
    best = {}
    for k in keys:
        means = [(r[k][0], r["method_key"]) for _, r in summary.iterrows() if r[k][2] > 0 and np.isfinite(r[k][0])]
        if len(means) > 1:
            top = max(m for m, _ in means)
            best[k] = {mk for m, mk in means if round(m, 1) == round(top, 1)}
    return best


def dataset_table(df: pd.DataFrame, bound: float | None) -> str:
    keys = [k for k, _, _ in HEADLINE]
    summary = _summary(df, keys)
    best = _bold_best(summary, keys)
    n_seeds = df.seed.nunique()
    headers = ["method", "seeds"] + [
        f"Bal (≤{100 * bound:.1f})" if k == "balance" and bound is not None else label for k, label, _ in HEADLINE
    ] + ["train s", "device"]
    rows, notes = [], []
    for _, r in summary.iterrows():
        if r.n_ok == 0:  # the reason goes under the table, so that the columns stay narrow
            status = "n/a" if r.n_na and not r.n_failed else "**failed**"
            notes.append(f"- {r.method}: {status}: {'; '.join(r.errors)[:300]}")
            rows.append([r.method, f"0/{n_seeds}", status] + [""] * (len(HEADLINE) - 1) + ["", ""])
            continue
        seeds = f"{r.n_ok}/{n_seeds}" + (f" ({r.n_failed} failed)" if r.n_failed else "")
        cells = []
        for k in keys:
            text = _fmt(*r[k], digits=2 if k == "entropy" else 1)
            cells.append(f"**{text}**" if r.method_key in best.get(k, ()) else text)
        rows.append([r.method, seeds] + cells + [_fmt(*r["time"], digits=1), r["device"]])
    table = tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
    return table + ("\n\n" + "\n".join(notes) if notes else "")


OVERVIEW = ("acc", "nmi", "mnce")


def overview_table(df: pd.DataFrame) -> str | None:
    """Every method against every dataset at one glance: ACC / NMI / MNCE (means over seeds) of
    each method's default configuration on each dataset's default configuration (the records
    in the plain-named folders whose label has no brackets), the seeds that finished where not
    all did. Rows: the methods with any record; columns: the datasets
    with a default configuration. "–": no run at the defaults (other configurations, such as a
    reduced schedule, are in the dataset's own section). None when nothing ran at the defaults
    (the quick suite's test configurations). A cell marked "†" holds records made before a
    parameter of today's default existed (the README's one exception to row names); a note
    under the table names the parameter."""
    plain = df[(df.method_folder == df.method_name) & (df.dataset_key == df.dataset_name)
               & ~df.method.str.contains(r"\[", regex=True) & ~df.dataset.str.contains(r"\[", regex=True)]
    if plain.empty:
        return None
    datasets = sorted(plain.dataset_name.unique())
    rows, older = [], []
    for method in sorted(df.method_name.unique()):
        cells = []
        for dataset in datasets:
            d = plain[(plain.dataset_name == dataset) & (plain.method_name == method)]
            n_seeds = df[df.dataset_key == dataset].seed.nunique()
            if d.empty:
                cells.append("–")
                continue
            r = _summary(d, list(OVERVIEW)).iloc[0]
            if r.n_ok == 0:
                cells.append("n/a" if r.n_na and not r.n_failed else "failed")
                continue
            text = " / ".join(f"{r[k][0]:.1f}" if r[k][2] else "?" for k in OVERVIEW)
            before = sorted({b for b in d[d.status == "ok"].before if b})
            if before:
                text += " †"
                older.append(f"† {method} on {dataset}: made before {' / '.join(before)} existed")
            cells.append(text + (f" ({r.n_ok}/{n_seeds})" if r.n_ok < n_seeds else ""))
        rows.append([method] + cells)
    table = tabulate(rows, headers=["method"] + datasets, tablefmt="github", disable_numparse=True)
    return table + ("\n\n" + "\n".join(older) if older else "")


def paper_table(df: pd.DataFrame, dataset_name: str) -> str | None:
    """Ours beside the papers' numbers, for runs with the method's default parameters."""
    ds_cls = registry.datasets.get(dataset_name)
    if not ds_cls.paper_name:
        return None
    rows, explained = [], []
    keys = list(papers.METRIC_KEYS.values())
    summary = _summary(df, keys)
    for _, r in summary.iterrows():
        try:
            cls = registry.methods.get(r.method_name)
        except KeyError:
            continue
        if not cls.paper_name or r.n_ok == 0 or "[" in r.method:
            continue
        rep = papers.reported(ds_cls.paper_name, cls.paper_name)
        if len(rep):
            explained += [f"- **{r.method}**: {note}" for note in papers.notes(ds_cls.paper_name, cls.paper_name)]
        for _, p in rep.sort_values(["reported_in", "metric"]).iterrows():
            mean, std, n = r[p.metric_key]
            rows.append([r.method, p.metric_key.upper() if p.metric_key != "f1" else "F", _fmt(mean, std, n),
                         f"{p.value:.1f}", f"{mean - p.value:+.1f}", p.source])
    if not rows:
        return None
    table = tabulate(rows, headers=["method", "metric", "ours", "paper", "Δ", "source"], tablefmt="github",
                     disable_numparse=True)
    if explained:
        table += "\n\nWhere ours differ (from `bench/data/paper_notes.csv`):\n\n" + "\n".join(explained)
    return table


def stages_table(df: pd.DataFrame) -> str | None:
    """The labels some methods keep from intermediate points of their training (e.g. FCMI's
    warm-up clustering, DFC's k-means start), scored like the final ones: a diagnosis of where
    a result comes from, never a result."""
    stages = sorted({c.split(":")[1] for c in df.columns if c.startswith("m:") and c.count(":") == 2})
    if not stages:
        return None
    keys = [f"{s}:{k}" for s in stages for k in STAGE_METRICS] + ["acc", "nmi"]
    summary = _summary(df, keys)
    headers = ["method", "stage", "seeds", "ACC", "NMI", "Bal", "MNCE", "final ACC", "final NMI"]
    rows = []
    for _, r in summary.iterrows():
        for s in stages:
            if r[f"{s}:acc"][2]:
                rows.append([r.method, s, str(r[f"{s}:acc"][2])] + [_fmt(*r[f"{s}:{k}"]) for k in STAGE_METRICS]
                            + [_fmt(*r["acc"]), _fmt(*r["nmi"])])
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True) if rows else None


def fairness_cost_table(df: pd.DataFrame, attributes: list[str]) -> str | None:
    """Time spent on the fairness term beside what it buys (the infomin paper's axis), per
    configuration and device: timings from different devices (or from jobs sharing the
    cores, "CPU ×2") are never averaged together. Joint MNCE only with several attributes."""
    if "m:fair_step_ms" not in df:
        return None
    timed = df[df["m:fair_step_ms"].notna()]
    columns = {"fair_step_ms": "fairness step ms", "fair_fit_ms": "estimator fit ms", "fair_epoch_s": "epoch s",
               "fair_last": "D̂ last", "mi_cg_last": "I(Q;G) last", "acc": "ACC", "mnce": "MNCE"}
    if len(attributes) > 1:
        columns["mnce[joint]"] = "MNCE joint"
    keys = list(columns)
    digits = {"fair_step_ms": 2, "fair_fit_ms": 2, "fair_last": 3, "mi_cg_last": 3}
    rows = []
    for device in sorted(timed.device.unique()):
        for _, r in _summary(timed[timed.device == device], keys).iterrows():
            if r.n_ok:
                rows.append([r.method, device, str(r.n_ok)] + [_fmt(*r[k], digits=digits.get(k, 1)) for k in keys])
    if not rows:
        return None
    rows.sort(key=lambda row: (row[0], row[1]))
    headers = ["method", "device", "seeds", *columns.values()]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def intersectional_table(df: pd.DataFrame, attributes: list[str]) -> str | None:
    if len(attributes) < 2:
        return None
    groups = attributes + ["joint"]
    keys = [f"{m}[{g}]" for g in groups for m in ("balance", "ratio_balance", "mnce")] + [
        "balance_worst", "mi[joint]", "mi_sum"]
    summary = _summary(df, keys)
    headers = ["method"] + [f"{lab} {g}" for g in groups for lab in ("Bal", "RatioBal", "MNCE")] + [
        "worst Bal", "I(C;joint)", "Σ I(C;G_s)"]
    rows = []
    for _, r in summary.iterrows():
        if r.n_ok:
            rows.append([r.method] + [_fmt(*r[k], digits=3 if k.startswith("mi") else 1) for k in keys])
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True) if rows else None


def build_report(store, leaderboard_path, figures_dir, title="FairClusterBench leaderboard", note="",
                 figures=True) -> str:
    """Write ``leaderboard_path`` (and figures) from the records in ``store``; return the text."""
    records = store.records()
    leaderboard_path = Path(leaderboard_path)
    figures_dir = Path(figures_dir)
    lines = [f"# {title}", "", "_Generated by `python run_benchmark.py --report-only` from the stored run records; "
             "do not edit by hand._", ""]
    if note:
        lines += [note, ""]
    lines += ["Protocol: transductive (every sample is clustered and evaluated), final epoch reported (no epoch "
              "is picked with labels), paired seeds, mean ± sample std over seeds. Percent except Entropy "
              "(nats) and train time (seconds). Bal is FCMI's raw-count balance with its dataset bound in the "
              "header; RatioBal is normalised by the dataset's group shares (1 = perfect). Best mean per column "
              "in bold.", ""]
    if not records:
        lines.append("No records yet.")
    df = records_frame(records, count_clusters_used(store, records)) if records else None
    provenance = defaultdict(set)
    for r in records:
        if r["status"] == "ok":
            provenance["devices"].add(r.get("device", "?"))
            commit = r.get("git_commit", "?")
            provenance["commits"].add(commit[:12] + ("+dirty" if commit.endswith("+dirty") else ""))
            provenance["torch"].add(r.get("versions", {}).get("torch", "?"))
    overview = overview_table(df) if df is not None else None
    if overview:
        lines += ["## Overview", "", "ACC / NMI / MNCE of each method's default configuration (mean over seeds; "
                  "(k/n): only k of the dataset's n seeds finished). –: not run at its defaults; reduced schedules "
                  "and other configurations, the intersectional metrics and the papers' numbers are in each "
                  "dataset's section.", "", overview, ""]
    if df is not None:
        for dkey in sorted(df.dataset_key.unique()):
            d = df[df.dataset_key == dkey]
            first = next(r for r in records if r["dataset"]["key"] == dkey)
            attrs = next((r["attributes"] for r in records if r["dataset"]["key"] == dkey and "attributes" in r), [])
            bound = d["m:balance_bound"].dropna().iloc[0] if "m:balance_bound" in d and d[
                "m:balance_bound"].notna().any() else None
            n = next((r.get("n_samples") for r in records if r["dataset"]["key"] == dkey and r.get("n_samples")), None)
            lines += [f"## {first['dataset']['label']}", "",
                      f"{'?' if n is None else f'{n:,}'} samples; attributes: {', '.join(attrs) or '?'} (fairness columns use `{attrs[0] if attrs else '?'}`)", "",
                      dataset_table(d, bound), ""]
            inter = intersectional_table(d, attrs)
            if inter:
                lines += ["Intersectional fairness (per attribute and joint group):", "", inter, ""]
            try:
                ptab = paper_table(d, first["dataset"]["name"])
            except KeyError:
                ptab = None
            if ptab:
                lines += ["Compared with the papers (our default configuration; Δ = ours − paper):", "", ptab, ""]
            collapsed = collapse_notes(d)
            if collapsed:
                lines += [f"Collapsed soft assignments (final H(C|X) ≥ {COLLAPSE_RATIO:.0%} of log K, the ratio in "
                          "brackets): every soft assignment is near-uniform, so the soft fairness term is met "
                          "without fair clusters; the hard labels can still follow the groups (`methods/ifc.py`):",
                          "", *collapsed, ""]
            empty = empty_cluster_notes(d)
            if empty:
                lines += ["Runs that leave clusters empty (clusters used of K): their metrics are those of a "
                          "partition with fewer clusters:", "", *empty, ""]
            sweeps = sweep_table(d, attrs)
            if sweeps:
                lines += ["Fairness-weight sweeps (each configuration at every weight it ran with, in order of "
                          "the weight; the seeds that finished at each):", "", sweeps, ""]
            cost = fairness_cost_table(d, attrs)
            if cost:
                lines += ["Cost of the fairness term (mean per clustering epoch: milliseconds per step of the "
                          "fairness term, of which the estimator's own fit, and seconds per epoch; timings are "
                          "per device and comparable only within one). D̂ last: what the term read in the last "
                          "epoch (batch mean, in its own units; for IFC its whole weighted term, adversary included); I(Q;G) last: the exact plug-in I(Q;G) of the same "
                          "batches (nats, on the joint group). D̂ near 0 beside a large "
                          "I(Q;G) is an estimator the encoder fooled:", "", cost, ""]
            stab = stages_table(d)
            if stab:
                lines += ["Intermediate stages (diagnosis only: the labels a method had part-way, scored like "
                          "the final ones; the result is the final labels):", "", stab, ""]
            names = plot_dataset(d, figures_dir, dkey) if figures else [
                nm for nm in figure_names(dkey) if (figures_dir / nm).is_file()]
            if names:
                rel = [os.path.relpath(figures_dir / nm, leaderboard_path.parent) for nm in names]
                lines += [" · ".join(f"[{nm}]({p})" for nm, p in zip(names, rel)) +
                          ("" if figures else " (drawn by an earlier report: --no-figures did not redraw them)"), ""]
    if provenance:
        lines += ["---", "", "Devices: " + ", ".join(sorted(provenance["devices"])) + ". Commits: " +
                  ", ".join(sorted(provenance["commits"])) + ". torch: " + ", ".join(sorted(provenance["torch"])) +
                  ". Every run's record (labels, metrics, versions) is under the runs/ folder.", ""]
    text = "\n".join(lines)
    leaderboard_path.parent.mkdir(parents=True, exist_ok=True)
    leaderboard_path.write_text(text)
    return text


def _sweep_series(method_name: str, params: dict, mark: str = "") -> tuple[str, float, str]:
    """(series label, weight, weight name) of a configuration: configurations of one method
    that differ only in its fairness weight (``Method.fairness_weight``) form one series,
    labelled like a leaderboard row with the weight set to its default. ``mark`` is the
    row's bracket from :func:`_tell_apart` (``version=1``, ``before <parameter>``): records of
    an older version or made before a parameter existed form series of their own, as they
    have rows of their own, rather than join today's under today's name."""
    try:
        cls = registry.methods.get(method_name)
    except UnknownName:
        return _with_mark(method_name, mark), np.nan, ""
    weight_key = getattr(cls, "fairness_weight", None)
    if not weight_key:
        return _with_mark(Spec.from_json("method", {"name": method_name, "params": params}).label, mark), np.nan, ""
    weight = params.get(weight_key, cls.parameters.get(weight_key))
    rest = {**params, weight_key: cls.parameters.get(weight_key)}
    label = _with_mark(Spec.from_json("method", {"name": method_name, "params": rest}).label, mark)
    return label, float(weight) if isinstance(weight, (int, float)) else np.nan, weight_key


def _series(summary: pd.DataFrame) -> dict:
    """Series label -> [(weight, weight name, summary row)], each in order of the weight."""
    series = defaultdict(list)
    for _, r in summary.iterrows():
        label, weight, weight_key = _sweep_series(r.method_name, r.params, r.mark)
        series[label].append((weight, weight_key, r))
    for pts in series.values():
        pts.sort(key=lambda p: (np.nan_to_num(p[0], nan=-1.0), p[2]["method"]))
    return dict(sorted(series.items()))


def _is_sweep(pts) -> bool:
    return len({w for w, _, _ in pts if np.isfinite(w)}) > 1


def sweep_table(df: pd.DataFrame, attributes: list[str]) -> str | None:
    """The fairness-weight sweeps, the table behind the trade-off figure: each method
    configuration at every weight it ran with, in order of the weight, with the utility and
    the fairness it reached (joint-group columns with several attributes)."""
    keys = ["acc", "nmi", "mnce"] + (["mnce[joint]", "mi[joint]"] if len(attributes) > 1 else ["mi"])
    summary = _summary(df, keys)
    summary = summary[summary.n_ok > 0]
    if summary.empty:
        return None
    rows = []
    for label, pts in _series(summary).items():
        if not _is_sweep(pts):
            continue
        for weight, weight_key, r in pts:
            rows.append([label, f"{weight_key}={weight:g}", ",".join(map(str, r.seeds))]
                        + [_fmt(*r[k], digits=3 if k.startswith("mi") else 1) for k in keys])
    if not rows:
        return None
    headers = ["configuration", "weight", "seeds", "ACC", "NMI", "MNCE"] + (
        ["MNCE joint", "I(C;joint)"] if len(attributes) > 1 else ["I(C;G)"])
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


MARKERS = "osD^vP*X<>"


def _style(i: int, plt) -> dict:
    """A colour and marker per series, distinct for up to 100 series (colours repeat after
    ten, each time with the next marker)."""
    return {"color": plt.cm.tab10.colors[i % 10], "marker": MARKERS[(i // 10) % len(MARKERS)]}


def _draw_series(ax, series: dict, xkey: str, ykey: str, plt, annotate: bool) -> None:
    for i, (label, pts) in enumerate(series.items()):
        xs, ys, xe, ye = (np.array([r[k][j] for _, _, r in pts]) for k, j in
                          ((xkey, 0), (ykey, 0), (xkey, 1), (ykey, 1)))
        style = _style(i, plt)
        ax.errorbar(xs, ys, xerr=xe, yerr=ye, capsize=3, linestyle="-" if len(pts) > 1 else "none",
                    label=label, **style)
        if annotate and _is_sweep(pts):
            for (w, _, _), x, y in zip(pts, xs, ys):
                ax.annotate(f"{w:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=6,
                            color=style["color"])


def _tradeoff_plot(series, xkey, ykey, xlabel, ylabel, title, path, plt):
    """Utility against fairness, one point per method configuration with error bars; the
    configurations of one method that differ only in its fairness weight (a sweep, one entry
    of ``series``) are joined by a line in order of the weight."""
    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    _draw_series(ax, series, xkey, ykey, plt, annotate=False)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120, metadata={"Software": None})
    plt.close(fig)


def _sweeps_plot(series, joint: bool, title: str, path, plt) -> bool:
    """The trade-off view of the fairness-weight sweeps alone: one curve per method
    configuration, each point labelled with its weight; ACC against MNCE, and NMI against the
    joint MNCE (or MNCE with one attribute). False (nothing drawn) when no sweep was run."""
    series = {k: v for k, v in series.items() if _is_sweep(v)}
    if not series:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    fair2 = "mnce[joint]" if joint else "mnce"
    for ax, (xkey, ykey, xlabel, ylabel) in zip(axes, [
            ("mnce", "acc", "MNCE (%)  → fairer", "ACC (%)"),
            (fair2, "nmi", ("joint MNCE (%)" if joint else "MNCE (%)") + "  → fairer", "NMI (%)")]):
        _draw_series(ax, series, xkey, ykey, plt, annotate=True)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120, metadata={"Software": None})
    plt.close(fig)
    return True


def figure_names(dkey: str) -> list[str]:
    """Every figure :func:`plot_dataset` can draw for dataset ``dkey``, in its order."""
    return [f"{dkey}_{kind}.png" for kind in ("acc_vs_mnce", "nmi_vs_joint_mnce", "sweeps", "metrics")]


def plot_dataset(df: pd.DataFrame, figures_dir: Path, dkey: str) -> list[str]:
    """Trade-off figures (ACC vs MNCE; NMI vs joint MNCE with several attributes) and per-metric bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k, _, _ in HEADLINE]
    joint = "m:mnce[joint]" in df and df["m:mnce[joint]"].notna().any()
    summary = _summary(df, keys + (["mnce[joint]"] if joint else []))
    summary = summary[summary.n_ok > 0]
    if summary.empty:
        return []
    figures_dir.mkdir(parents=True, exist_ok=True)
    acc_name, joint_name, sweeps_name, metrics_name = figure_names(dkey)
    names = [acc_name]
    series = _series(summary)
    _tradeoff_plot(series, "mnce", "acc", "MNCE (%)  → fairer", "ACC (%)  → more accurate",
                   f"{dkey}: accuracy vs fairness", figures_dir / names[-1], plt)
    if joint:
        names.append(joint_name)
        _tradeoff_plot(series, "mnce[joint]", "nmi", "joint (intersectional) MNCE (%)  → fairer",
                       "NMI (%)", f"{dkey}: utility vs intersectional fairness", figures_dir / names[-1], plt)
    if _sweeps_plot(series, joint, f"{dkey}: fairness-weight sweeps (each point labelled with its weight; "
                    "mean ± std over seeds)", figures_dir / sweeps_name, plt):
        names.append(sweeps_name)

    # Horizontal bars, one row per configuration shared by every panel: long configuration
    # names stay readable however many rows a sweep adds.
    labels = summary["method"].tolist()
    n = len(labels)
    label_inches = 0.065 * max(len(s) for s in labels)
    fig, axes = plt.subplots(1, len(keys), figsize=(label_inches + 1.7 * len(keys), 1.2 + 0.22 * n), sharey=True)
    colours = plt.cm.tab10(np.arange(n) % 10)
    for ax, (k, label, _) in zip(axes, HEADLINE):
        means = [r[k][0] for _, r in summary.iterrows()]
        stds = [r[k][1] for _, r in summary.iterrows()]
        ax.barh(range(n), means, xerr=stds, capsize=2, color=colours, height=0.7)
        ax.set_title(label, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(n))
    axes[0].set_yticklabels(labels, fontsize=7)
    axes[0].invert_yaxis()  # first configuration on top, as in the table
    fig.suptitle(f"{dkey}: mean ± std over seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(figures_dir / metrics_name, dpi=100, metadata={"Software": None})
    plt.close(fig)
    names.append(metrics_name)
    return names
