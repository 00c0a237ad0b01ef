"""FCMI: loss terms against hand computations, the group-decoder network, and small real runs
on digits-reversed (where plain clustering separates the two groups completely)."""
import dataclasses
import math

import numpy as np
import pytest
import torch

from bench import ParameterError, registry
from bench.metrics import mutual_information
from methods._fcmi_loop import (
    cluster_entropy,
    cluster_group_mi,
    cluster_group_table,
    conditional_entropy,
    hard_mi,
    kmeans_seed_schedule,
    train_fcmi_style,
)
from methods._nets import build_autoencoder

CPU = torch.device("cpu")


# -- loss terms -----------------------------------------------------------------------------
def test_cluster_group_table_by_hand():
    q = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], dtype=torch.float64)
    p = cluster_group_table(q, torch.tensor([0, 1, 1]), 2)
    # O[k, g] = sum of q_ik over the samples of group g; the total is the batch size.
    expected = np.array([[0.9, 0.2 + 0.6], [0.1, 0.8 + 0.4]]) / 3
    np.testing.assert_allclose(p.numpy(), expected, rtol=1e-12)


def test_absent_group_gets_a_tenth_of_the_smallest_entry():
    q = torch.tensor([[0.75, 0.25], [0.5, 0.5]], dtype=torch.float64)
    p = cluster_group_table(q, torch.tensor([0, 0]), 3)
    O = np.array([[1.25, 0.075, 0.075], [0.75, 0.075, 0.075]])  # min positive 0.75 -> 0.075
    np.testing.assert_allclose(p.numpy(), O / O.sum(), rtol=1e-12)


def test_entropies_and_mutual_information_by_hand():
    p = torch.tensor([[0.3, 0.1], [0.2, 0.4]], dtype=torch.float64)
    # p(k) = (0.4, 0.6), p(g) = (0.5, 0.5)
    h_c = -(0.4 * math.log(0.4) + 0.6 * math.log(0.6))
    mi = 0.3 * math.log(0.3 / 0.2) + 0.1 * math.log(0.1 / 0.2) + 0.2 * math.log(0.2 / 0.3) + 0.4 * math.log(0.4 / 0.3)
    assert cluster_entropy(p).item() == pytest.approx(h_c, rel=1e-12)
    assert cluster_group_mi(p).item() == pytest.approx(mi, rel=1e-12)
    # Extremes: independent table -> 0; clusters that are the groups -> log 2.
    independent = torch.outer(torch.tensor([0.2, 0.8], dtype=torch.float64), torch.tensor([0.3, 0.7], dtype=torch.float64))
    assert cluster_group_mi(independent).item() == pytest.approx(0.0, abs=1e-12)
    separated = torch.tensor([[0.5 - 1e-12, 1e-12], [1e-12, 0.5 - 1e-12]], dtype=torch.float64)
    assert cluster_group_mi(separated).item() == pytest.approx(math.log(2), abs=1e-9)

    q = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.25, 0.75]], dtype=torch.float64)
    h_cx = (0.0 + math.log(2) - 0.25 * math.log(0.25) - 0.75 * math.log(0.75)) / 3
    assert conditional_entropy(q).item() == pytest.approx(h_cx, abs=1e-7)  # eps 1e-8 inside the log


def test_hard_mi_matches_the_metric():
    rng = np.random.default_rng(0)
    labels, groups = rng.integers(0, 4, 500), rng.integers(0, 3, 500)
    labels[groups == 2] = 3  # some dependence
    got = hard_mi(torch.as_tensor(labels), torch.as_tensor(groups), 4, 3).item()
    assert got == pytest.approx(mutual_information(labels, groups), rel=1e-9)


# -- networks -------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,arch", [((1, 28, 28), "conv28"), ((1, 8, 8), "mlp"), ((12,), "mlp")])
def test_each_sample_goes_through_its_group_decoder(shape, arch):
    torch.manual_seed(0)
    model = build_autoencoder(shape, 4, 3, width=0.05).eval()
    assert model.arch == arch
    x = torch.randn(6, *shape)
    group = torch.tensor([2, 0, 1, 2, 0, 0])
    h, x_hat = model(x, group)
    assert h.shape == (6, 4) and x_hat.shape == (6, *shape)
    torch.testing.assert_close(h.norm(dim=1), torch.ones(6))
    for i, g in enumerate(group.tolist()):
        alone = model.group_decoders[g](model.decoder_shared(h[i : i + 1])).reshape(shape)
        torch.testing.assert_close(x_hat[i], alone, rtol=1e-5, atol=1e-6)
    assert model.train()(x, group)[1].shape == x_hat.shape  # a one-sample group under BatchNorm


def test_embed_dim_parameter():
    with pytest.raises(ParameterError):
        registry.methods.get("fcmi")(embed_dim="many")
    assert registry.methods.get("fcmi")(embed_dim=5).embed_dim(10) == 5
    assert registry.methods.get("fcmi")().embed_dim(10) == 10


# -- small real runs ------------------------------------------------------------------------
RUN = dict(epochs=10, warmup_epochs=2, batch_size=128, kmeans_iter=30, kmeans_restarts=2, width=0.25)


@pytest.fixture(scope="module")
def digits():
    data = registry.datasets.get("digits-reversed")().load()
    idx = np.sort(np.random.default_rng(0).choice(data.n_samples, 1000, replace=False))
    return dataclasses.replace(data, X=data.X[idx], y=data.y[idx], groups=data.groups[idx])


@pytest.fixture(scope="module")
def runs(digits):
    def fit(**kw):
        method = registry.methods.get("fcmi")(**{**RUN, **kw})
        return method.fit(method.prepare_input(digits.clustering_input()), 0, CPU)

    return {"fair": fit(), "again": fit(), "unfair": fit(beta=0.0)}


def test_labels_valid_and_reproducible(runs, digits):
    labels = runs["fair"].labels
    assert labels.shape == (digits.n_samples,) and labels.min() >= 0 and labels.max() < 10
    assert len(np.unique(labels)) >= 5
    np.testing.assert_array_equal(labels, runs["again"].labels)
    assert len(runs["fair"].history) == RUN["epochs"]


def test_loss_decreases(runs):
    hist = runs["fair"].history
    assert hist[-1]["rec"] < 0.5 * hist[0]["rec"]
    warm = RUN["warmup_epochs"]
    assert hist[-1]["loss"] < hist[warm]["loss"]  # the full objective, once clustering starts
    assert all(row["mi_cg"] == 0.0 for row in hist[:warm])  # no clustering terms in warm-up


def test_fairness_term_lowers_mutual_information(runs, digits):
    g = digits.groups[:, 0]
    fair, unfair = mutual_information(runs["fair"].labels, g), mutual_information(runs["unfair"].labels, g)
    assert unfair > 0.3  # without the term the clusters follow the groups (max log 2 = 0.69)
    assert fair < 0.5 * unfair
    assert runs["fair"].history[-1]["kmeans_mi"] < runs["unfair"].history[-1]["kmeans_mi"]


def test_many_groups_and_pluggable_penalty():
    """30 small groups (HAR-like: absent and one-sample groups in batches) and a penalty module
    whose own parameter is trained by the loop."""
    data = registry.datasets.get("synthetic")(n_samples=300, n_groups=30, n_features=6).load()

    class Penalty(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))
            self.calls = 0

        def forward(self, q, h, groups, n_groups):
            self.calls += 1
            assert q.shape[1] == 3 and n_groups == 30
            return (self.w - 1) ** 2 + cluster_group_mi(cluster_group_table(q, groups, n_groups))

    torch.manual_seed(0)
    model = build_autoencoder((6,), 3, 30, width=0.05)
    penalty = Penalty()
    out = train_fcmi_style(
        model, data.X, data.groups[:, 0], 3, seed=0, device=CPU, n_groups=30, epochs=3, warmup_epochs=1,
        batch_size=64, kmeans_iter=10, kmeans_restarts=1, fairness_penalty=penalty, final_centroids="last",
    )
    assert out.labels.shape == (300,) and 0 <= out.labels.min() and out.labels.max() < 3
    assert penalty.calls == 2 * (300 // 64) and 0 < penalty.w.item() < 1
    assert all(np.isfinite(v) for row in out.history for v in row.values())


@pytest.mark.parametrize("value, same_every_epoch", [("epoch", False), ("fixed", True), ("1234", True)])
def test_kmeans_seed_fixes_the_per_epoch_kmeans_as_the_originals_faiss_does(value, same_every_epoch):
    """With the network frozen, each epoch embeds the same points; a fixed k-means seed
    (the original's faiss seed 1234 is fixed, fcmi.md 2.1) then finds the same clustering every
    epoch, while per-epoch seeds draw other samples and starts and find others."""
    data = registry.datasets.get("synthetic")(n_samples=600, n_groups=2, n_features=6, n_clusters=6).load()
    torch.manual_seed(0)
    model = build_autoencoder((6,), 6, 2, width=0.05)
    for module in model.modules():  # frozen: no step (lr 0) and no BatchNorm statistics either
        if isinstance(module, torch.nn.BatchNorm1d):
            module.momentum = 0.0
    out = train_fcmi_style(
        model, data.X, data.groups[:, 0], 6, seed=0, device=CPU, epochs=8, warmup_epochs=1, lr=0.0,
        batch_size=64, kmeans_iter=3, kmeans_restarts=1, kmeans_max_points_per_centroid=10,
        kmeans_backend="torch", kmeans_seed=value,
    )
    mis = {round(row["kmeans_mi"], 12) for row in out.history if "kmeans_mi" in row}
    assert (len(mis) == 1) == same_every_epoch, mis
    schedule = kmeans_seed_schedule(value, 3)
    assert (schedule(5) == schedule(6)) == same_every_epoch
    assert (schedule(5) == kmeans_seed_schedule(value, 4)(5)) == (value == "1234")  # seeds vary runs


def test_bad_kmeans_seed_is_refused_in_one_line():
    for name in ("fcmi", "ifc", "infomin-slice"):
        with pytest.raises(ParameterError, match=f"{name}: kmeans_seed must be one of epoch, fixed"):
            registry.methods.get(name)(kmeans_seed="sometimes")
