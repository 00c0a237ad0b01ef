"""Contract tests generated for every registered method (benchopt / ClustPy style).

Each method runs its tiny ``test_parameters`` on small embedded data on the CPU and must:
return one valid label per sample, give the same labels for the same seed, and never see
the true labels (the input object has none, and scrambling them changes nothing).
"""
import dataclasses

import numpy as np
import pytest
import torch

from bench import NotApplicable, registry
from bench.api import ClusteringInput

CPU = torch.device("cpu")
METHODS = registry.methods.names()


@pytest.fixture(scope="module")
def small_datasets():
    synth = registry.datasets.get("synthetic")(n_samples=240, n_features=6, n_clusters=3, n_attributes=2).load()
    digits = registry.datasets.get("digits-reversed")().load()
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(digits.n_samples, 400, replace=False))
    digits = dataclasses.replace(digits, X=digits.X[idx], y=digits.y[idx], groups=digits.groups[idx])
    return {"synthetic": synth, "digits": digits}


def _fit(method, data, seed):
    inp = method.prepare_input(data.clustering_input())
    return method.fit(inp, seed, CPU)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("which", ["synthetic", "digits"])
def test_method_contract(name, which, small_datasets):
    data = small_datasets[which]
    method = registry.methods.get(name).test_config()
    try:
        method.check_applicable(method.prepare_input(data.clustering_input()))
    except NotApplicable as exc:
        pytest.skip(str(exc))
    out = _fit(method, data, seed=0)
    labels = np.asarray(out.labels)
    assert labels.shape == (data.n_samples,)
    assert np.issubdtype(labels.dtype, np.integer)
    assert labels.min() >= 0 and labels.max() < data.n_clusters
    if out.embedding is not None:
        assert out.embedding.shape[0] == data.n_samples
        assert np.isfinite(out.embedding).all()
    for row in out.history:
        assert all(np.isfinite(v) for v in row.values() if isinstance(v, float))

    # Same seed, same labels (on the CPU).
    again = _fit(method, data, seed=0)
    np.testing.assert_array_equal(labels, np.asarray(again.labels))

    # No access to true labels: the input has none, and scrambled labels change nothing.
    inp = data.clustering_input()
    assert not any(f.name in ("y", "labels", "target") for f in dataclasses.fields(ClusteringInput))
    assert not hasattr(inp, "y")
    scrambled = dataclasses.replace(data, y=np.random.default_rng(1).permutation(data.y))
    np.testing.assert_array_equal(labels, np.asarray(_fit(method, scrambled, seed=0).labels))


def test_every_method_declares_itself():
    for name, cls in registry.methods.items():
        assert cls.description and len(cls.description.splitlines()) == 1, name
        assert set(cls.test_parameters) <= set(cls.parameters), name
        cls()  # defaults are valid
        cls.test_config()
