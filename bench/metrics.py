"""Clustering and fairness metrics: pure functions of (true labels, predicted labels, groups).

Definitions are pinned to what the papers compute (``shared/reference/fcmi.md`` §4,
``anchors.md`` §3.4). With N_kg = #{i : pred_i = k, g_i = g}, N_g = Σ_k N_kg, r_g = N_g / N:

* ACC  -- accuracy after Hungarian matching of clusters to labels.
* NMI  -- I(Y;C) / ((H(Y)+H(C))/2) (scikit-learn, ``average_method="arithmetic"``, pinned).
* ARI  -- adjusted Rand index.
* Balance (FCMI ``my_balance``) -- min_k [min_g N_kg / max_g N_kg] on raw counts, zero counts
  set to 1e-5. Bounded by the dataset's min_g N_g / max_g N_g (:func:`balance_bound`).
* Ratio balance (Chierichetti / Bera) -- min over non-empty clusters of
  min_g min(p_kg / r_g, r_g / p_kg), p_kg = N_kg / N_k; 0 when a group is absent from a
  non-empty cluster. Its maximum is 1 on every dataset.
* Entropy (DFC / FCMI) -- mean over groups of −Σ_k p(k|g) log(p(k|g) + 1e-5).
* MNCE (FCMI, Eq. 14) -- min_k H(G|C=k) / H(G) on N_kg + 1e-6; an empty cluster has the
  uniform group mix and so never lowers it.
* F_β (FCMI) -- (1+β²)·NMI·MNCE / (β²·NMI + MNCE); β = 1 is the harmonic mean.

Clusters are 0..n_clusters-1; an empty cluster is a cluster (FCMI counts over all K).
With several sensitive attributes, :func:`evaluate` also reports each attribute and the
joint (intersectional) group, the cross product of all attributes.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from .api import joint_group_codes

BALANCE_EPS = 1e-5
ENTROPY_EPS = 1e-5
MNCE_EPS = 1e-6


def _as_labels(a, what: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {a.shape}")
    if a.size and (a.min() < 0 or not np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"{what} must be non-negative integers")
    return a.astype(np.int64, copy=False)


def contingency(pred, groups, n_clusters: int | None = None, n_groups: int | None = None) -> np.ndarray:
    """N[k, g]: number of samples of group g in cluster k (shape n_clusters × n_groups)."""
    pred, groups = _as_labels(pred, "pred"), _as_labels(groups, "groups")
    if pred.shape != groups.shape:
        raise ValueError(f"pred and groups differ in length: {pred.shape[0]} vs {groups.shape[0]}")
    k = max(int(pred.max()) + 1 if pred.size else 0, n_clusters or 0)
    g = max(int(groups.max()) + 1 if groups.size else 0, n_groups or 0)
    table = np.zeros((k, g), dtype=np.int64)
    np.add.at(table, (pred, groups), 1)
    return table


def accuracy(y, pred) -> float:
    """Clustering accuracy with the best one-to-one cluster→label map (Hungarian)."""
    y, pred = _as_labels(y, "y"), _as_labels(pred, "pred")
    table = contingency(pred, y)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / y.size)


def nmi(y, pred) -> float:
    """Normalised mutual information, arithmetic-mean normalisation (pinned)."""
    return float(normalized_mutual_info_score(y, pred, average_method="arithmetic"))


def ari(y, pred) -> float:
    return float(adjusted_rand_score(y, pred))


def balance(pred, groups, n_clusters: int | None = None, n_groups: int | None = None) -> float:
    """FCMI's Balance: min_k min_g N_kg / max_g N_kg, zero counts set to 1e-5 (raw counts)."""
    table = contingency(pred, groups, n_clusters, n_groups).astype(float)
    table[table == 0] = BALANCE_EPS
    return float((table.min(axis=1) / table.max(axis=1)).min())


def balance_bound(groups, n_groups: int | None = None) -> float:
    """Largest Balance any clustering can reach: min_g N_g / max_g N_g."""
    counts = np.bincount(_as_labels(groups, "groups"), minlength=n_groups or 0).astype(float)
    counts[counts == 0] = BALANCE_EPS
    return float(counts.min() / counts.max())


def ratio_balance(pred, groups, n_clusters: int | None = None, n_groups: int | None = None) -> float:
    """Chierichetti/Bera balance normalised by dataset group shares; 1 is perfect everywhere."""
    table = contingency(pred, groups, n_clusters, n_groups).astype(float)
    share = table.sum(axis=0) / table.sum()
    table = table[table.sum(axis=1) > 0]
    table, share = table[:, share > 0], share[share > 0]
    p = table / table.sum(axis=1, keepdims=True)
    if (p == 0).any():
        return 0.0
    ratio = p / share
    return float(np.minimum(ratio, 1.0 / ratio).min())


def entropy(pred, groups, n_clusters: int | None = None, n_groups: int | None = None) -> float:
    """Mean over groups of H(C | G=g) = −Σ_k p(k|g) log(p(k|g) + 1e-5) (DFC/FCMI)."""
    table = contingency(pred, groups, n_clusters, n_groups).astype(float)
    table = table[:, table.sum(axis=0) > 0]
    p = table / table.sum(axis=0, keepdims=True)
    return float((-(p * np.log(p + ENTROPY_EPS)).sum(axis=0)).mean())


def mnce(pred, groups, n_clusters: int | None = None, n_groups: int | None = None) -> float:
    """Minimal normalised conditional entropy, min_k H(G|C=k) / H(G) (FCMI Eq. 14).

    Computed on N_kg + 1e-6 as FCMI does. A dataset with a single group has H(G) = 0 and
    every clustering is trivially fair: 1.0."""
    table = contingency(pred, groups, n_clusters, n_groups).astype(float)
    if (table.sum(axis=0) > 0).sum() <= 1:
        return 1.0
    joint = table + MNCE_EPS
    joint /= joint.sum()
    pg = joint.sum(axis=0)
    h_g = -(pg * np.log(pg)).sum()
    pg_k = joint / joint.sum(axis=1, keepdims=True)
    h_g_k = -(pg_k * np.log(pg_k)).sum(axis=1)
    return float(h_g_k.min() / h_g)


def f_measure(nmi_value: float, mnce_value: float, beta: float = 1.0) -> float:
    """F_β of NMI (utility) and MNCE (fairness), FCMI's trade-off score."""
    den = beta**2 * nmi_value + mnce_value
    return float((1 + beta**2) * nmi_value * mnce_value / den) if den > 0 else 0.0


def mutual_information(pred, groups) -> float:
    """I(C;G) in nats from the empirical contingency table (plug-in)."""
    table = contingency(pred, groups).astype(float)
    p = table / table.sum()
    outer = p.sum(axis=1, keepdims=True) * p.sum(axis=0, keepdims=True)
    nz = p > 0
    return float((p[nz] * np.log(p[nz] / outer[nz])).sum())


def fairness_metrics(pred, groups, n_clusters: int | None = None, n_groups: int | None = None) -> dict:
    """Balance, its bound, ratio balance, Entropy, MNCE and I(C;G) for one group vector."""
    return {
        "balance": balance(pred, groups, n_clusters, n_groups),
        "balance_bound": balance_bound(groups, n_groups),
        "ratio_balance": ratio_balance(pred, groups, n_clusters, n_groups),
        "entropy": entropy(pred, groups, n_clusters, n_groups),
        "mnce": mnce(pred, groups, n_clusters, n_groups),
        "mi": mutual_information(pred, groups),
    }


def evaluate(y, pred, groups, n_clusters: int | None = None, attribute_names=None, n_values=None) -> dict:
    """Every metric of one clustering.

    ``groups`` is (n,) or (n, S). The unsuffixed fairness keys (``balance``, ``mnce``, ...)
    and ``f1`` refer to the primary (first) attribute. With S > 1 there are also
    ``<metric>[<attribute>]`` for each attribute, ``<metric>[joint]`` for the intersectional
    group, ``balance_worst`` (the worst Balance over attributes and the joint group) and
    ``mi_sum`` = Σ_s I(C; G_s), to set beside ``mi[joint]`` (neither bounds the other).
    """
    y, pred = _as_labels(y, "y"), _as_labels(pred, "pred")
    groups = np.asarray(groups)
    if groups.ndim == 1:
        groups = groups[:, None]
    if not (y.shape[0] == pred.shape[0] == groups.shape[0]):
        raise ValueError(f"lengths differ: y {y.shape[0]}, pred {pred.shape[0]}, groups {groups.shape[0]}")
    n_attr = groups.shape[1]
    names = list(attribute_names or [f"a{j}" for j in range(n_attr)])
    n_values = list(n_values or [None] * n_attr)
    out = {"acc": accuracy(y, pred), "nmi": nmi(y, pred), "ari": ari(y, pred)}
    out.update(fairness_metrics(pred, groups[:, 0], n_clusters, n_values[0]))
    out["f1"] = f_measure(out["nmi"], out["mnce"])
    if n_attr > 1:
        for j, name in enumerate(names):
            for key, value in fairness_metrics(pred, groups[:, j], n_clusters, n_values[j]).items():
                out[f"{key}[{name}]"] = value
        codes, _ = joint_group_codes(groups)
        for key, value in fairness_metrics(pred, codes, n_clusters).items():
            out[f"{key}[joint]"] = value
        out["f1[joint]"] = f_measure(out["nmi"], out["mnce[joint]"])
        out["balance_worst"] = min(out[f"balance[{n}]"] for n in names + ["joint"])
        out["mi_sum"] = sum(out[f"mi[{n}]"] for n in names)
    return out


#: Display order, labels and direction of the headline metrics.
HEADLINE = [
    ("acc", "ACC", True),
    ("nmi", "NMI", True),
    ("ari", "ARI", True),
    ("balance", "Bal", True),
    ("ratio_balance", "RatioBal", True),
    ("entropy", "Entropy", True),
    ("mnce", "MNCE", True),
    ("f1", "F", True),
]
