"""DFC (methods/dfc.py): each loss term against a hand computation, then tiny runs on the
embedded digits-reversed data (CPU)."""
import dataclasses
import math

import numpy as np
import pytest
import torch

from bench import ParameterError, registry
from bench.metrics import mutual_information
from methods._dfc_nets import ConvEncoder
from methods._dfc_parts import (
    ClusterLayer,
    Critic,
    cs_divergence,
    divergence,
    grad_reverse,
    grl_coefficient,
    group_losses,
    inv_lr,
    js_divergence,
    kl_divergence,
    soft_mutual_information,
    structural_loss,
    target_distribution,
)
from methods.dfc import DFC, to_32, unit_range

CPU = torch.device("cpu")
T = torch.tensor


def close(a, b, tol=1e-6):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64), atol=tol)


# ---------------------------------------------------------------- loss terms, by hand
def test_student_t_assignment_by_hand():
    layer = ClusterLayer(2, 2, alpha=1.0, centers=T([[1.0, 0.0], [0.0, 2.0]]))
    # squared distances 1 and 4: (1+1)^-1 = 1/2, (1+4)^-1 = 1/5 -> q = (5/7, 2/7)
    assert close(layer(T([[0.0, 0.0]])).exp(), [[5 / 7, 2 / 7]])
    layer2 = ClusterLayer(2, 2, alpha=2.0, centers=T([[1.0, 0.0], [0.0, 2.0]]))
    a, b = 1.5**-1.5, 3.0**-1.5  # (1 + d²/2)^(-3/2)
    assert close(layer2(T([[0.0, 0.0]])).exp(), [[a / (a + b), b / (a + b)]])


def test_dec_target_distribution_by_hand():
    q = T([[0.6, 0.4], [0.2, 0.8]])
    # f = (0.8, 1.2); q²/f rows: (0.45, 0.1333), (0.05, 0.5333); both rows sum to 7/12
    assert close(target_distribution(q), [[27 / 35, 8 / 35], [3 / 35, 32 / 35]])
    assert not target_distribution(q.requires_grad_()).requires_grad


def test_kl_by_hand():
    p, q = T([[0.5, 0.5]]), T([[0.25, 0.75]])
    assert close(kl_divergence(p, q.log()), 0.5 * math.log(2) + 0.5 * math.log(0.5 / 0.75))
    # summed over rows (KLDivLoss(reduction="sum"))
    assert close(kl_divergence(p.repeat(3, 1), q.log().repeat(3, 1)), 3 * kl_divergence(p, q.log()))


def test_js_by_hand_symmetric_and_bounded():
    p, q = T([[0.5, 0.5]]), T([[0.25, 0.75]])
    m = [0.375, 0.625]
    kl_pm = 0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1])
    kl_qm = 0.25 * math.log(0.25 / m[0]) + 0.75 * math.log(0.75 / m[1])
    assert close(js_divergence(p, q), 0.5 * (kl_pm + kl_qm))
    # the MLRC reproduction's "JS", ½KL(M‖Q) + ½KL(M‖P), is a different number
    wrong = 0.5 * sum(mi * math.log(mi / qi) for mi, qi in zip(m, [0.25, 0.75])) + 0.5 * sum(
        mi * math.log(mi / pi) for mi, pi in zip(m, [0.5, 0.5]))
    assert abs(float(js_divergence(p, q)) - wrong) > 1e-3
    # disjoint supports reach log 2 exactly
    assert close(js_divergence(T([[1.0, 0.0]]), T([[0.0, 1.0]])), math.log(2))
    gen = torch.Generator().manual_seed(0)
    P = torch.softmax(3 * torch.randn(200, 5, generator=gen), 1)
    Q = torch.softmax(3 * torch.randn(200, 5, generator=gen), 1)
    per_row = torch.stack([js_divergence(P[i : i + 1], Q[i : i + 1]) for i in range(200)])
    assert close(js_divergence(P, Q), js_divergence(Q, P))
    assert (per_row >= -1e-7).all() and (per_row <= math.log(2) + 1e-6).all()
    assert close(divergence("JS", P, Q.log()), js_divergence(P, Q))


def test_cs_by_hand():
    P, Q = T([[1.0, 0.0], [0.0, 1.0]]), T([[0.5, 0.5], [0.5, 0.5]])
    # ΣPQ = 1, ΣP² = 2, ΣQ² = 1 -> −log(1/√2) = ½ log 2 (one scalar for the whole matrix)
    assert close(cs_divergence(P, Q), 0.5 * math.log(2))
    assert close(cs_divergence(Q, 3 * Q), 0.0, tol=1e-6)
    assert close(divergence("CS", P, Q.log()), 0.5 * math.log(2))
    with pytest.raises(ValueError, match="accepted: KL, JS, CS"):
        divergence("KS", P, Q.log())


def test_structural_term_by_hand():
    q = T([[1.0, 0.0], [0.0, 1.0]]).requires_grad_()
    teacher = T([[0.5, 0.5], [0.5, 0.5]]).requires_grad_()
    # QQᵀ = I, Q̂Q̂ᵀ = all ½: four entries off by ½ -> 4 · ¼ = 1
    loss = structural_loss(q, teacher)
    assert close(loss, 1.0)
    loss.backward()
    assert teacher.grad is None and q.grad is not None  # the teacher side is detached


def test_group_losses_use_each_groups_own_target():
    gen = torch.Generator().manual_seed(1)
    log_q = torch.log_softmax(torch.randn(7, 3, generator=gen), 1)
    q_t = torch.softmax(torch.randn(7, 3, generator=gen), 1)
    l_c, l_s = group_losses(log_q, q_t, [0, 4, 7], "KL")
    q = log_q.exp()
    per_group = [kl_divergence(target_distribution(q[a:b]), log_q[a:b]) for a, b in [(0, 4), (4, 7)]]
    assert close(l_c, 0.5 * (per_group[0] + per_group[1]))
    pooled = kl_divergence(target_distribution(q), log_q)  # one target over the whole batch
    assert not close(l_c, 0.5 * pooled, tol=1e-4)
    assert close(l_s, 0.5 * (structural_loss(q[:4], q_t[:4]) + structural_loss(q[4:], q_t[4:])))


def test_soft_mutual_information_diagnostic():
    groups = T([0, 0, 1, 1])
    split = torch.eye(2)[[0, 0, 1, 1]]  # clusters = groups
    assert close(soft_mutual_information(split, groups, 2), math.log(2))
    assert close(soft_mutual_information(torch.full((4, 3), 1 / 3), groups, 2), 0.0)
    rng = np.random.default_rng(0)
    labels, g = rng.integers(0, 4, 50), rng.integers(0, 3, 50)
    hard = torch.eye(4)[torch.as_tensor(labels)]
    assert close(soft_mutual_information(hard, torch.as_tensor(g), 3), mutual_information(labels, g), tol=1e-5)


def test_gradient_reversal_identity_forward_negated_scaled_backward():
    x = torch.randn(4, 3, requires_grad=True)
    w = torch.randn(4, 3)
    y = grad_reverse(x, 0.3)
    assert torch.equal(y, x)
    (y * w).sum().backward()
    assert close(x.grad, -0.3 * w)


def test_schedules_by_hand():
    assert grl_coefficient(0, 100) == 0.0
    assert close(grl_coefficient(50, 100), 2 / (1 + math.exp(-5)) - 1)
    assert close(grl_coefficient(100, 100), 2 / (1 + math.exp(-10)) - 1)
    assert inv_lr(1e-2, 0, 100) == 1e-2
    assert close(inv_lr(1e-2, 100, 100), 1e-2 * 11**-0.75)  # 0.166 · lr at the end


def test_critic_losses_by_hand():
    torch.manual_seed(0)
    critic = Critic(n_clusters=3, n_groups=2).eval()
    with torch.no_grad():
        critic.net[-1].weight.zero_()
        critic.net[-1].bias.fill_(math.log(3))  # sigmoid = 0.75 for every input
    q = torch.softmax(torch.randn(3, 3), 1)
    # target 1 for group 0, 0 for group 1: (2·(−log .75) − log .25) / 3
    expected = (2 * -math.log(0.75) - math.log(0.25)) / 3
    assert close(critic.loss(q, T([0, 0, 1])), expected)
    multi = Critic(n_clusters=3, n_groups=3).eval()
    with torch.no_grad():
        multi.net[-1].weight.zero_()
        multi.net[-1].bias.copy_(T([0.0, math.log(2), 0.0]))  # softmax (¼, ½, ¼)
    assert close(multi.loss(q, T([0, 1, 2])), (math.log(4) + math.log(2) + math.log(4)) / 3)


def test_encoder_matches_released_size():
    enc = ConvEncoder(1, 64)
    n = sum(t.numel() for t in enc.state_dict().values())
    assert n == 611_477  # dfc.md §1.2: the released checkpoints, BatchNorm buffers included
    mu, logvar = enc.eval()(torch.rand(2, 1, 32, 32))
    assert mu.shape == logvar.shape == (2, 64)


def test_input_conversion():
    x = torch.rand(3, 1, 28, 28) * 2 - 1  # FCMI's [-1, 1]
    u = unit_range(x)
    assert close(u, (x + 1) / 2) and u.min() >= 0 and u.max() <= 1
    assert torch.equal(unit_range(u), u)
    assert to_32(u, "bilinear").shape == (3, 1, 32, 32)
    padded = to_32(u, "pad")
    assert torch.equal(padded[:, :, 2:30, 2:30], u)


def test_padding_fills_the_frame_with_each_images_background():
    """dfc.md §7: the digit fills about 28 of 32 px. Black frame for MNIST-style digits, white
    for reversed ones (pad, then reverse), and a stroke touching the border is not extended."""
    digit = torch.zeros(28, 28)
    digit[5:23, 12:16] = 1.0
    digit[0:10, 20] = 0.8                     # a USPS-like stroke that reaches the top edge
    x = torch.stack([digit, 1 - digit])[:, None]
    padded = to_32(x, "pad")
    assert padded.shape == (2, 1, 32, 32) and torch.equal(padded[:, :, 2:30, 2:30], x)
    frame = torch.ones(32, 32, dtype=torch.bool)
    frame[2:30, 2:30] = False
    assert (padded[0, 0][frame] == 0).all() and (padded[1, 0][frame] == 1).all()
    assert DFC.parameters["resize"] == "pad"


def test_validation():
    with pytest.raises(ParameterError, match="divergence"):
        DFC(divergence="KS")
    with pytest.raises(ParameterError, match="iters"):
        DFC(iters=0)
    with pytest.raises(ParameterError, match="lr"):
        DFC(lr=0.0)


# ---------------------------------------------------------------- the critic, in isolation
def test_critic_through_gradient_reversal_lowers_group_dependence():
    """DFC's critic, GRL, λ(t), lr schedule and ×10 critic lr on a soft-assignment head over
    features that reveal group and class, with a pooled DEC term (one target for the whole
    batch, so the clustering term does nothing for fairness): with the adversarial term the
    clusters stop encoding the group but keep the class; without it they encode both."""
    gen = torch.Generator().manual_seed(0)
    n, K = 400, 4
    g, y = torch.arange(n) % 2, (torch.arange(n) // 2) % 2
    feats = torch.randn(n, 6, generator=gen)
    feats[:, 0] += 3.0 * (2 * g - 1)
    feats[:, 1] += 3.0 * (2 * y - 1)

    def run(coeff_fair, T=300):
        torch.manual_seed(0)
        head, critic = torch.nn.Linear(6, K), Critic(K, 2)
        opt = torch.optim.Adam([{"params": list(head.parameters()), "mult": 1.0},
                                {"params": list(critic.parameters()), "mult": 10.0}], lr=1e-2, weight_decay=5e-4)
        for t in range(T):
            for group in opt.param_groups:
                group["lr"] = inv_lr(1e-2, t, T) * group["mult"]
            log_q = torch.log_softmax(head(feats), 1)
            q = log_q.exp()
            loss = kl_divergence(target_distribution(q), log_q) / n
            loss = loss + coeff_fair * critic.loss(grad_reverse(q, grl_coefficient(t + 1, T)), g)
            opt.zero_grad()
            loss.backward()
            opt.step()
        labels = head(feats).argmax(1).numpy()
        return mutual_information(labels, g.numpy()), mutual_information(labels, y.numpy())

    mi_g_off, mi_y_off = run(0.0)
    mi_g_on, mi_y_on = run(1.0)
    assert mi_g_off > 0.5 and mi_y_off > 0.5  # unfair without the critic
    assert mi_g_on < 0.05 < 0.5 < mi_y_on  # fair with it, class structure kept


# ---------------------------------------------------------------- tiny runs
# Teachers trained longer and faster than the defaults' 1e-4 so that, as at paper scale, they
# are sharper than the student's k-means start.
TINY = {"iters": 100, "batch_size": 128, "pretrain_epochs": 10, "pretrain_batch_size": 64, "teacher_init": "pooled",
        "teacher_epochs": 60, "teacher_batch_size": 64, "teacher_lr": 1e-3, "kmeans_n_init": 1, "log_every": 10}


@pytest.fixture(scope="module")
def digits():
    data = registry.datasets.get("digits-reversed")().load()
    idx = np.sort(np.random.default_rng(0).choice(data.n_samples, 400, replace=False))
    return dataclasses.replace(data, X=data.X[idx], y=data.y[idx], groups=data.groups[idx])


def _run(data, seed=0, **params):
    method = DFC(**{**TINY, **params})
    return method.fit(method.prepare_input(data.clustering_input()), seed, CPU)


@pytest.fixture(scope="module")
def tiny_run(digits):
    return _run(digits)


def _rows(out):
    return [r for r in out.history if "iter" in r]


def test_tiny_run_labels_valid_and_reproducible(digits, tiny_run):
    labels = tiny_run.labels
    assert labels.shape == (digits.n_samples,) and labels.min() >= 0 and labels.max() < 10
    assert len(np.unique(labels)) > 5
    assert tiny_run.embedding.shape == (digits.n_samples, 64)
    np.testing.assert_array_equal(labels, _run(digits).labels)
    rows = _rows(tiny_run)
    assert [r["iter"] for r in rows] == [0.0] + [float(t) for t in range(10, 101, 10)]


def test_tiny_run_losses_decrease(tiny_run):
    """The VAE pretraining loss, the structural term (its targets are the frozen teachers)
    and the total fall. L_c alone rises: P is rebuilt from Q each step, so KL(P‖Q) ≈ 0 for
    the soft start and grows as self-training sharpens Q (dfc.md §2 step 3)."""
    vae = [r["vae_loss"] for r in tiny_run.history if "vae_loss" in r and "teacher_group" not in r]
    assert vae[-1] < 0.9 * vae[0]
    rows = _rows(tiny_run)[1:]
    assert rows[-1]["structural"] < 0.5 * rows[0]["structural"]
    assert rows[-1]["loss"] < 0.8 * rows[0]["loss"]
    assert all(np.isfinite(r["loss"]) for r in rows)


def test_tiny_run_lowers_group_dependence(digits, tiny_run):
    """From the pooled VAE's k-means start, which splits the digits by colour (I(C;G) ≈ log 2),
    DFC's training makes the clusters far less dependent on the group. (On this data the
    per-group target distribution does most of it; the critic's gradient is small beside the
    summed L_c and L_s, see the docstring of methods/dfc.py.)"""
    rows = _rows(tiny_run)
    start, end = rows[0]["hard_mi"], rows[-1]["hard_mi"]
    assert start > 0.5
    assert end < 0.35 * start
    assert end == pytest.approx(mutual_information(tiny_run.labels, digits.groups[:, 0]), abs=1e-5)


def test_conv_path_on_28px_images_in_minus_one_one(digits):
    """28×28 images in [-1, 1] (our MNIST datasets) go through the conv encoder at 32×32."""
    x = torch.as_tensor(digits.X[:80]) * 2 - 1
    x28 = torch.nn.functional.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False).numpy()
    data = dataclasses.replace(digits, X=x28, y=digits.y[:80], groups=digits.groups[:80])
    method = DFC(**{**TINY, "iters": 4, "batch_size": 16, "pretrain_epochs": 1, "teacher_epochs": 1, "log_every": 2})
    assert method._inputs(data.clustering_input(), CPU)[1] == "conv"
    out = method.fit(method.prepare_input(data.clustering_input()), 0, CPU)
    assert out.labels.shape == (80,) and out.labels.max() < 10


def test_initial_and_teacher_centres_use_every_sample(digits, monkeypatch):
    """k-means runs once per model here, on all μ features (the MLRC reproduction's KMeans), not
    on the faiss-style subsample of at most 1,000 points per centroid used per epoch by FCMI."""
    import methods.dfc as dfc_module

    calls = []
    real = dfc_module.kmeans

    def spy(X, k, **kw):
        calls.append((X.shape[0], k * kw.get("max_points_per_centroid", 1000)))
        return real(X, k, **kw)

    monkeypatch.setattr(dfc_module, "kmeans", spy)
    many = dataclasses.replace(digits, X=np.tile(digits.X, (30, 1, 1, 1)), y=np.tile(digits.y, 30),
                               groups=np.tile(digits.groups, (30, 1)))       # 12,000 > 10 × 1,000
    _run(many, iters=2, pretrain_epochs=1, teacher_epochs=1, kmeans_n_init=1)
    assert len(calls) == 3 and calls[0][0] == 12_000                 # pooled, then one per group
    assert all(sample >= n for n, sample in calls)


def test_many_groups_extension():
    data = registry.datasets.get("synthetic")(n_samples=240, n_features=6, n_clusters=3, n_groups=3).load()
    method = DFC(**{**TINY, "iters": 10, "batch_size": 32, "pretrain_epochs": 2, "teacher_epochs": 2, "log_every": 5})
    out = method.fit(method.prepare_input(data.clustering_input()), 0, CPU)
    assert out.labels.shape == (240,) and out.labels.max() < 3
    assert all(np.isfinite(r["fairness"]) for r in _rows(out)[1:])


@pytest.mark.parametrize("options", [{"divergence": "JS"}, {"divergence": "CS", "init_centers": "xavier"}])
def test_divergence_options_run(options):
    data = registry.datasets.get("synthetic")(n_samples=240, n_features=6, n_clusters=3).load()
    method = DFC(**{**TINY, "iters": 10, "batch_size": 32, "pretrain_epochs": 2, "teacher_epochs": 2, "log_every": 5,
                    **options})
    out = method.fit(method.prepare_input(data.clustering_input()), 0, CPU)
    assert out.labels.shape == (240,) and out.labels.max() < 3
    assert all(np.isfinite(r["clustering"]) and r["clustering"] >= -1e-6 for r in _rows(out)[1:])
