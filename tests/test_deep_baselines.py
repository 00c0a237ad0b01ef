"""AE and DEC, the fairness-unaware deep references: DEC's Student-t assignment, target
distribution and loss against hand computations; both recover well-separated blobs; DEC's
stopping rule; neither looks at the sensitive attribute; determinism."""
import dataclasses
import math

import numpy as np
import pytest
import torch

from bench import ParameterError, registry
from bench.metrics import accuracy
from methods._nets import build_autoencoder
from methods.ae import AE, code_scale
from methods.dec import DEC, kl_loss, student_t_assignment, target_distribution

CPU = torch.device("cpu")
TINY = {"batch_size": 64, "width": 0.25, "kmeans_iter": 50, "kmeans_restarts": 10}  # AE's own restarts: 3 merged two blobs at some seeds


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# -- DEC's parts by hand ---------------------------------------------------------------------
def test_student_t_assignment_by_hand():
    z = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    mu = torch.tensor([[0.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    # α = 1: kernel 1/(1 + d²). Row 0: d² = (0, 4) -> (1, 1/5); row 1: d² = (2, 2) -> equal.
    expected = np.array([[1.0, 0.2], [1 / 3, 1 / 3]])
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(student_t_assignment(z, mu).numpy(), expected, rtol=1e-12)
    # α = 2: kernel (1 + d²/2)^(-3/2).
    k0 = np.array([1.0, 3.0 ** -1.5])
    np.testing.assert_allclose(student_t_assignment(z, mu, alpha=2.0)[0].numpy(), k0 / k0.sum(), rtol=1e-12)


def test_target_distribution_by_hand():
    q = [[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.25, 0.25, 0.5]]
    f = [sum(row[k] for row in q) for k in range(3)]  # soft frequencies (0.85, 1.15, 1.0)
    expected = []
    for row in q:
        w = [row[k] ** 2 / f[k] for k in range(3)]
        expected.append([wk / sum(w) for wk in w])
    p = target_distribution(torch.tensor(q, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(p, np.array(expected), rtol=1e-12)
    # First row written out: q²/f = (0.25/0.85, 0.09/1.15, 0.04/1.0).
    w0 = np.array([0.25 / 0.85, 0.09 / 1.15, 0.04])
    np.testing.assert_allclose(p[0], w0 / w0.sum(), rtol=1e-12)
    # The target sharpens each row's preferred cluster.
    assert np.all(p.max(1) > np.array(q).max(1))


def test_kl_loss_by_hand():
    p = torch.tensor([[0.7, 0.3], [0.5, 0.5]], dtype=torch.float64)
    q = torch.tensor([[0.5, 0.5], [0.5, 0.5]], dtype=torch.float64)
    expected = (0.7 * math.log(0.7 / 0.5) + 0.3 * math.log(0.3 / 0.5) + 0.0) / 2
    assert float(kl_loss(p, q)) == pytest.approx(expected, rel=1e-12)
    assert float(kl_loss(q, q)) == pytest.approx(0.0, abs=1e-15)


# -- end to end on blobs ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def blobs():
    """Four well-separated Gaussian blobs in 8-d, scaled into [-1, 1] as the image loaders
    deliver their inputs (the decoders end in Tanh); two generated groups."""
    d = registry.datasets.get("synthetic")(n_samples=400, n_features=8, n_clusters=4, seed=1).load()
    return dataclasses.replace(d, X=(d.X / np.abs(d.X).max()).astype(np.float32))


def _fit(method, data, seed=0):
    return method.fit(method.prepare_input(data.clustering_input()), seed, CPU)


def test_ae_recovers_blobs_and_learns_to_reconstruct(blobs):
    out = _fit(AE(epochs=20, **TINY), blobs)
    assert accuracy(blobs.y, out.labels) >= 0.95
    rec = [row["rec"] for row in out.history]
    assert len(rec) == 20 and rec[-1] < 0.5 * rec[0]
    assert out.embedding.shape == (blobs.n_samples, 4)  # d = K
    scale = {k: out.history[-1][k] for k in ("code_norm", "code_spread")}
    assert scale == pytest.approx(code_scale(out.embedding))
    assert scale["code_spread"] > 0.1 * scale["code_norm"]  # a live code: samples differ


def test_code_scale_tells_a_dead_code_from_a_live_one():
    rng = np.random.default_rng(0)
    live = rng.normal(size=(500, 10))
    dead = 569.0 / np.sqrt(10) + 0.01 * live  # seed 1 of DEC on MNIST-USPS: one code for all
    assert code_scale(live)["code_norm"] == pytest.approx(np.sqrt(10), rel=0.1)
    assert code_scale(live)["code_spread"] == pytest.approx(1.0, rel=0.1)
    assert code_scale(dead)["code_spread"] < 1e-3 * code_scale(dead)["code_norm"]


@pytest.mark.parametrize("arch", ["conv28", "mlp"])
def test_linear_reconstruction_keeps_the_encoder_learning_where_tanh_saturates(arch):
    """Why AE and DEC (version 2) end in a linear reconstruction layer (DEC §3.2): in the
    dead MNIST-USPS pretrainings of version 1 every pre-Tanh value was saturated (|x| > 3 at
    seed 4's epoch-8 checkpoint) and the encoder's gradient was exactly 0. Push the last
    layer's bias into that regime: Tanh passes no gradient back, the linear layer does."""
    shape = (1, 28, 28) if arch == "conv28" else (64,)
    x = torch.rand(32, *shape) * 2 - 1  # inputs in [-1, 1], as the loaders deliver them
    grads = {}
    for output in ("tanh", "linear"):
        torch.manual_seed(0)
        model = AE(output=output, arch=arch)
        net = build_autoencoder(shape, 10, 1, arch=arch, normalize=False, output=model.params["output"])
        last = [m for m in net.group_decoders[0] if isinstance(m, (torch.nn.Linear, torch.nn.ConvTranspose2d))][-1]
        assert isinstance(net.group_decoders[0][-1], torch.nn.Tanh if output == "tanh" else torch.nn.Identity)
        with torch.no_grad():
            last.bias.fill_(-30.0)  # every output pixel far into Tanh's flat tail
        net.train()
        h = net.encode(x)
        (net.decode_sorted(h, [len(x)]) - x).pow(2).mean().backward()
        grads[output] = sum(float(p.grad.norm()) for p in net.encoder.parameters())
    assert grads["tanh"] == 0.0 and grads["linear"] > 1e-3
    assert AE().params["output"] == DEC().params["output"] == "linear"


def test_dec_recovers_blobs_and_sharpens_assignments(blobs):
    out = _fit(DEC(pretrain_epochs=10, epochs=10, update_interval=10, **TINY), blobs)
    assert accuracy(blobs.y, out.labels) >= 0.95
    phases = [row["phase"] for row in out.history]
    assert phases.count(0.0) == 10 and 1 <= phases.count(1.0) <= 10
    assert {"code_norm", "code_spread"} <= set(out.history[9])  # the code's scale after pretraining
    kl = [row["kl"] for row in out.history if row["phase"] == 1.0]
    assert kl[-1] < kl[0]  # the assignments move towards their sharpened targets


def test_dec_stops_when_labels_settle(blobs):
    # tol = 1: any label change below 100 % stops DEC at the second target update.
    out = _fit(DEC(pretrain_epochs=1, epochs=5, update_interval=3, tol=1.0, **TINY), blobs)
    dec_rows = [row for row in out.history if row["phase"] == 1.0]
    assert dec_rows[-1]["iterations"] == 3 and "label_change" in dec_rows[-1]
    full = _fit(DEC(pretrain_epochs=1, epochs=5, update_interval=3, tol=0.0, **TINY), blobs)
    assert [row for row in full.history if row["phase"] == 1.0][-1]["iterations"] == 5 * (400 // 64)


@pytest.mark.parametrize("cls", [AE, DEC])
def test_never_uses_the_sensitive_attribute_and_is_deterministic(cls, blobs):
    method = cls(**({"epochs": 3} if cls is AE else {"pretrain_epochs": 2, "epochs": 2, "update_interval": 3}), **TINY)
    assert not method.fairness_aware
    out = _fit(method, blobs)
    again = _fit(method, blobs)
    np.testing.assert_array_equal(out.labels, again.labels)
    np.testing.assert_array_equal(out.embedding, again.embedding)
    flipped = dataclasses.replace(blobs, groups=1 - blobs.groups)
    np.testing.assert_array_equal(out.embedding, _fit(method, flipped).embedding)
    other_seed = _fit(method, blobs, seed=1)
    assert not np.array_equal(out.embedding, other_seed.embedding)


def test_parameter_validation():
    with pytest.raises(ParameterError, match="arch"):
        AE(arch="resnet")
    with pytest.raises(ParameterError, match="embed_dim"):
        AE(embed_dim="big")
    with pytest.raises(ParameterError, match="output must be one of tanh, linear, got 'sigmoid'"):
        DEC(output="sigmoid")
    with pytest.raises(ParameterError, match="tol"):
        DEC(tol=2.0)
    with pytest.raises(ParameterError, match="update_interval"):
        DEC(update_interval=0)
    with pytest.raises(ParameterError, match="dec_momentum"):
        DEC(dec_momentum=1.0)
