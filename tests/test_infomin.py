"""infomin-* methods: one FCMI backbone, only the fairness estimator changes."""
import numpy as np
import pytest
import torch

from bench import Attribute, LabelledData, ParameterError, registry
from bench.metrics import evaluate

CPU = torch.device("cpu")
TINY = dict(epochs=3, warmup_epochs=1, batch_size=128, kmeans_iter=20, kmeans_restarts=2, width=0.125)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def synthetic2():
    return registry.datasets.get("synthetic")(n_samples=240, n_features=6, n_clusters=3, n_attributes=2).load()


def xor_data(seed: int) -> LabelledData:
    """Two independent fair binary attributes; the dominant direction of X is g0 XOR g1, so an
    unaware clustering tends to be independent of each attribute but determined by the joint
    cell. A weaker second direction (the "labels", never shown to methods) is fair."""
    rng = np.random.default_rng(seed)
    n = 600
    g = rng.integers(0, 2, (n, 2))
    y = rng.integers(0, 2, n)
    X = 0.1 * rng.normal(size=(n, 4))
    X[:, 0] += 0.8 * (2 * (g[:, 0] ^ g[:, 1]) - 1)
    X[:, 1] += 0.3 * (2 * y - 1)
    return LabelledData(X=X.astype(np.float32), y=y, groups=g, attributes=(Attribute("a", 2), Attribute("b", 2)),
                        n_clusters=2, name="xor")


def run(name, data, seed=0, **params):
    method = registry.methods.get(name)(**params)
    return method.fit(method.prepare_input(data.clustering_input()), seed, CPU)


def test_joint_penalty_removes_xor_dependence_single_attribute_penalty_is_blind():
    cfg = dict(TINY, epochs=12, warmup_epochs=4, batch_size=200, beta=1.0)
    mi = {"single": [], "joint": []}
    for seed in (0, 1, 2):
        data = xor_data(seed)
        for encoding in mi:
            out = run("infomin-plugin", data, encoding=encoding, **cfg)
            metrics = evaluate(data.y, out.labels, data.groups, 2)
            assert metrics["mi_sum"] < 0.02  # each attribute alone is independent of the clusters
            mi[encoding].append(metrics["mi[joint]"])
    single, joint = np.array(mi["single"]), np.array(mi["joint"])
    # The single-attribute penalty leaves the clusters tied to the XOR cell; the joint one
    # removes most of that dependence, on every data seed.
    assert (joint < single).all(), mi
    assert single.mean() > 0.3 and joint.mean() < 0.5 * single.mean(), mi


def test_plugin_with_one_attribute_is_fcmi():
    data = registry.datasets.get("synthetic")(
        n_samples=400, n_features=6, n_clusters=3, n_attributes=1, group_shift=5.0, cluster_std=3.0
    ).load()
    cfg = dict(TINY, epochs=6, warmup_epochs=2)
    fcmi, plugin = run("fcmi", data, **cfg), run("infomin-plugin", data, **cfg)
    np.testing.assert_array_equal(fcmi.labels, plugin.labels)
    for a, b in zip(fcmi.history, plugin.history):
        assert np.isclose(a["fair"], b["fair"], rtol=1e-2, atol=1e-5)
        assert np.isclose(a["loss"], b["loss"], rtol=1e-4)


@pytest.mark.parametrize("name", ["infomin-hgr", "infomin-slice"])
def test_history_records_seconds_per_fairness_step(name, synthetic2):
    out = run(name, synthetic2, **TINY)
    assert len(out.history) == TINY["epochs"]
    for row in out.history:
        if row["epoch"] < TINY["warmup_epochs"]:
            assert "fair_fit_s" not in row
        else:
            assert 0 < row["fair_fit_s"] <= row["fair_step_s"] < 60
            assert np.isfinite(row["fair"])


@pytest.mark.parametrize("name,params", [
    ("infomin-club", dict(target="embedding", encoding="concat", inner_steps=1)),
    ("infomin-tc", dict(encoding="single", attribute=1, inner_steps=1)),
    ("infomin-pearson", dict(target="embedding", reduce="max")),
    ("infomin-club", dict(variant="categorical", inner_steps=1)),
    ("infomin-dcor", dict(encoding="concat")),
])
def test_targets_and_encodings_valid_and_deterministic(name, params, synthetic2):
    first = run(name, synthetic2, **TINY, **params)
    again = run(name, synthetic2, **TINY, **params)
    labels = np.asarray(first.labels)
    assert labels.shape == (240,) and labels.min() >= 0 and labels.max() < 3
    np.testing.assert_array_equal(labels, again.labels)
    assert first.embedding.shape == (240, 3) and np.isfinite(first.embedding).all()


def test_parameter_validation(synthetic2):
    with pytest.raises(ParameterError, match="target must be assignment"):
        registry.methods.get("infomin-plugin")(target="embedding")
    with pytest.raises(ParameterError, match="encoding"):
        registry.methods.get("infomin-slice")(encoding="pairs")
    with pytest.raises(ParameterError, match="n_slices"):
        registry.methods.get("infomin-slice")(n_slices=0)
    with pytest.raises(ParameterError, match="attribute 2"):
        run("infomin-pearson", synthetic2, attribute=2, **TINY)
    for name in registry.methods.names():
        if name.startswith("infomin-"):
            assert registry.methods.get(name).multi_attribute
