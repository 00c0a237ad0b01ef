"""Datasets that need no download: scikit-learn's digits with colour-reversed copies, and a
synthetic generator with controllable group imbalance and several sensitive attributes."""
from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits

from bench import Attribute, Dataset, LabelledData, ParameterError, register_dataset

from ._synthetic_attribute import SYNTHETIC_ATTRIBUTE, synthetic_attribute


@register_dataset
class DigitsReversed(Dataset):
    """scikit-learn's 1,797 handwritten digits (8×8, 16 grey levels) plus their colour-reversed
    copies, the small-scale analogue of Color-Reverse MNIST (FCMI §5, DFC §4): pixels scaled to
    [0, 1], reversed copy 1 − x, sensitive attribute = reversed (0 original, 1 reversed),
    10 clusters. ``reversed_fraction`` < 1 keeps a seeded subset of the reversed copies to make
    the groups unequal. ``ifc_attribute=True`` adds IFC's random binary 60/40 attribute as a
    second one (:mod:`datasets._synthetic_attribute`, as for ``reverse-mnist``): an image and its
    reversed twin share the value."""

    name = "digits-reversed"
    description = "sklearn digits + colour-reversed copies (embedded, no download); group = reversed"
    summary = "3,594 images 1x8x8 in [0,1]; 10 clusters; attribute reversed (2)"
    paper = "Color-Reverse MNIST construction of DFC (Li et al., CVPR 2020) and FCMI (Zeng et al., CVPR 2023)"
    embedded = True
    parameters = {"reversed_fraction": 1.0, "ifc_attribute": False}

    def validate(self):
        if not 0 < self.params["reversed_fraction"] <= 1:
            raise ParameterError("digits-reversed: reversed_fraction must be in (0, 1]")

    def load(self, data_dir=None) -> LabelledData:
        digits = load_digits()
        x = (digits.images / 16.0).astype(np.float32)[:, None]  # (1797, 1, 8, 8)
        y = digits.target.astype(np.int64)
        keep = np.arange(len(y))
        frac = self.params["reversed_fraction"]
        if frac < 1:
            rng = np.random.default_rng(0)
            keep = np.sort(rng.choice(len(y), int(round(frac * len(y))), replace=False))
        X = np.concatenate([x, 1.0 - x[keep]])
        labels = np.concatenate([y, y[keep]])
        groups = np.concatenate([np.zeros(len(y)), np.ones(len(keep))]).astype(np.int64)
        attributes = (Attribute("reversed", 2, ("original", "reversed")),)
        if self.params["ifc_attribute"]:
            values = synthetic_attribute([len(y)])
            groups = np.stack([groups, np.concatenate([values, values[keep]])], 1)
            attributes += (SYNTHETIC_ATTRIBUTE,)
        return LabelledData(X=X, y=labels, groups=groups, attributes=attributes, n_clusters=10, name=self.name)


@register_dataset
class Synthetic(Dataset):
    """Gaussian blobs with sensitive attributes, for tests and controlled studies.

    ``n_clusters`` well-separated blobs in ``n_features`` dimensions. Attribute 0 takes
    ``n_groups`` values with shares proportional to ``imbalance**-g`` (imbalance 1: equal
    groups). Attributes 1.. (``n_attributes`` − 1 of them) are binary and independent.
    ``group_shift`` moves each blob's points by a group-dependent offset, so that an
    unaware clustering splits along the attribute when the shift is large: the knob that
    makes fairness matter. A control dataset: its attributes are generated, not real."""

    name = "synthetic"
    description = "Gaussian blobs with generated groups (imbalance, several attributes, group shift); tests/control"
    summary = "n_samples x n_features; n_clusters clusters; generated attributes"
    embedded = True
    listed_in_all = False
    parameters = {
        "n_samples": 600,
        "n_features": 8,
        "n_clusters": 3,
        "n_groups": 2,
        "n_attributes": 1,
        "imbalance": 1.0,
        "group_shift": 0.0,
        "cluster_std": 1.0,
        "seed": 0,
    }

    def validate(self):
        p = self.params
        if p["n_samples"] < p["n_clusters"] or p["n_clusters"] < 1:
            raise ParameterError("synthetic: need 1 <= n_clusters <= n_samples")
        if p["n_groups"] < 1 or p["n_attributes"] < 1 or p["imbalance"] < 1:
            raise ParameterError("synthetic: need n_groups >= 1, n_attributes >= 1, imbalance >= 1")

    def load(self, data_dir=None) -> LabelledData:
        p = self.params
        rng = np.random.default_rng(p["seed"])
        n, d, k, G = p["n_samples"], p["n_features"], p["n_clusters"], p["n_groups"]
        centres = rng.normal(scale=10.0, size=(k, d))
        y = np.arange(n) % k
        share = p["imbalance"] ** -np.arange(G, dtype=float)
        g0 = rng.choice(G, size=n, p=share / share.sum())
        others = [rng.integers(0, 2, size=n) for _ in range(p["n_attributes"] - 1)]
        offsets = rng.normal(size=(G, d))
        X = centres[y] + rng.normal(scale=p["cluster_std"], size=(n, d)) + p["group_shift"] * offsets[g0]
        attributes = (Attribute("g0", G),) + tuple(Attribute(f"g{j + 1}", 2) for j in range(len(others)))
        return LabelledData(
            X=X.astype(np.float32), y=y, groups=np.stack([g0, *others], axis=1),
            attributes=attributes, n_clusters=k, name=self.name,
        )
