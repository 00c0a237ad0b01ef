"""IFC built from its README: experts + attention, adversarial discriminators, joint MI, sampling."""
import copy
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench import ParameterError, registry
from bench.metrics import balance, mutual_information
from methods._fcmi_loop import cluster_group_mi, cluster_group_table, soft_assignment
from methods._ifc_parts import (
    Discriminator,
    IFCFairness,
    grad_reverse,
    resample_indices,
    soft_intersectional_balance,
)
from methods._multi_attr import JointCoding, train_multi_attribute
from methods.ifc import IFC

CPU = torch.device("cpu")
TINY = IFC.test_parameters


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def data():
    synth = registry.datasets.get("synthetic")(n_samples=240, n_features=6, n_clusters=3, n_attributes=2)
    return synth.load().clustering_input()


def batch_loss(model, fairness, coding, data, centroids, n=96):
    """Reconstruction + IFC fairness side on the first n rows (as one step of the loop)."""
    x = torch.as_tensor(data.X[:n])
    code = torch.as_tensor(coding.codes[:n])
    h = model.encode(x)
    x_hat = model.decode(h, torch.as_tensor(data.groups[:n, 0]))
    q = soft_assignment(h, centroids)
    return F.mse_loss(x_hat, x) + fairness(q, h, code, coding.n_cells)


def discriminators(fairness):
    return [*fairness.attribute_discriminators, fairness.joint_discriminator]


def sharpen(fairness, std=0.3):
    """Discriminators with weights far from their N(0, 0.02) start, so that their outputs are
    away from chance and the adversarial gradient stands well above float32 noise."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in fairness.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * std)


def encoder_gradient(model, fairness, coding, data, centroids):
    model.zero_grad()
    fairness.zero_grad()
    batch_loss(model, fairness, coding, data, centroids).backward()
    return torch.cat([p.grad.flatten() for p in model.encoder.parameters()])


def trunk_gradient(model, fairness, coding, data, centroids):
    model.zero_grad()
    fairness.zero_grad()
    batch_loss(model, fairness, coding, data, centroids).backward()
    return torch.cat([p.grad.flatten() for p in model.encoder.trunk.parameters()])


def build(data, **params):
    model, fairness, coding, _ = IFC(**TINY, **params).build(data, seed=0, device=CPU)
    centroids = F.normalize(torch.randn(3, model.embed_dim, generator=torch.Generator().manual_seed(0)), dim=1)
    return model, fairness, coding, centroids


@pytest.fixture()
def built(data):
    return build(data, experts="on", adversary="reverse")


def test_grad_reverse():
    x = torch.randn(5, requires_grad=True)
    (grad_reverse(x, 0.5) * torch.arange(5.0)).sum().backward()
    torch.testing.assert_close(x.grad, -0.5 * torch.arange(5.0))


def test_discriminators_change_the_encoder_gradient_by_the_reversed_cross_entropy(built, data):
    """adversary="reverse". Fails if the discriminators see a detached embedding (the original
    code's flaw)."""
    model, fairness, coding, centroids = built
    assert fairness.joint_discriminator is not None and len(fairness.attribute_discriminators) == 2
    sharpen(fairness)
    fairness.gamma = 0.0
    without = trunk_gradient(model, fairness, coding, data, centroids)
    fairness.gamma = 1.0
    with_adv = trunk_gradient(model, fairness, coding, data, centroids)
    assert (with_adv - without).abs().max() > 1e-6
    # The change is exactly minus the gradient of the discriminators' cross-entropy.
    model.zero_grad()
    fairness.zero_grad()
    x, code = torch.as_tensor(data.X[:96]), torch.as_tensor(coding.codes[:96])
    h = model.encode(x)
    attrs = coding.attributes(code)
    ce = sum(F.cross_entropy(d(h), attrs[:, s]) for s, d in enumerate(fairness.attribute_discriminators))
    ce = ce + F.cross_entropy(fairness.joint_discriminator(h), code)
    ce.backward()
    ce_grad = torch.cat([p.grad.flatten() for p in model.encoder.trunk.parameters()])
    torch.testing.assert_close(with_adv - without, -ce_grad, rtol=1e-3, atol=1e-3 * float(ce_grad.abs().max()))
    # The discriminators themselves descend the cross-entropy (no reversal on their side).
    d_grad = fairness.joint_discriminator.net[-1].weight.grad.clone()
    fairness.zero_grad()
    model.zero_grad()
    batch_loss(model, fairness, coding, data, centroids).backward()
    torch.testing.assert_close(fairness.joint_discriminator.net[-1].weight.grad, d_grad, rtol=1e-3, atol=1e-7)


def test_confusion_target_moves_the_encoder_to_chance_and_trains_the_discriminators_apart(data):
    """adversary="confusion" (default): the encoder's gradient changes by exactly the gradient
    of the frozen discriminators' cross-entropy to the uniform distribution, and each
    discriminator's gradient is that of its own cross-entropy on the detached embedding (the
    confusion term does not reach it). Fails if either side is disconnected or mixed up."""
    model, fairness, coding, centroids = build(data)
    assert fairness.adversary == "confusion" and len(model.encoder.experts) == 2  # default: experts on
    sharpen(fairness)
    fairness.gamma = 0.0
    without = encoder_gradient(model, fairness, coding, data, centroids)
    fairness.gamma = 1.0
    with_adv = encoder_gradient(model, fairness, coding, data, centroids)
    d_grads = [d.net[0].weight.grad.clone() for d in discriminators(fairness)]
    assert (with_adv - without).abs().max() > 1e-6
    x, code = torch.as_tensor(data.X[:96]), torch.as_tensor(coding.codes[:96])
    targets = [*coding.attributes(code).T, code]
    model.zero_grad()
    fairness.zero_grad()
    h = model.encode(x)
    to_uniform = sum(-F.log_softmax(d(h), 1).mean() for d in discriminators(fairness))
    to_uniform.backward()
    expected = torch.cat([p.grad.flatten() for p in model.encoder.parameters()])
    torch.testing.assert_close(with_adv - without, expected, rtol=1e-3, atol=1e-3 * float(expected.abs().max()))
    for d, target, grad in zip(discriminators(fairness), targets, d_grads):
        d.zero_grad()
        F.cross_entropy(d(h.detach()), target).backward()
        torch.testing.assert_close(grad, d.net[0].weight.grad, rtol=1e-4, atol=1e-8)


def test_discriminator_batchnorm_is_optional_and_draws_the_same_weights():
    torch.manual_seed(0)
    plain = Discriminator(4, 3)
    torch.manual_seed(0)
    normed = Discriminator(4, 3, batchnorm=True)
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in plain.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in normed.modules()) == 2
    linear = [[m.weight for m in d.modules() if isinstance(m, torch.nn.Linear)] for d in (plain, normed)]
    assert all(torch.equal(a, b) for a, b in zip(*linear))


def test_experts_auto_follows_the_number_of_attributes():
    many = registry.datasets.get("synthetic")(n_samples=64, n_features=6, n_clusters=2, n_attributes=4)
    many = many.load().clustering_input()
    model, _, _, _ = IFC(**TINY, experts="auto").build(many, seed=0, device=CPU)
    assert len(model.encoder.experts) == 4  # S = 4 > explicit_max_attributes = 3
    model, _, _, _ = IFC(**TINY, experts="auto", explicit_max_attributes=4).build(many, seed=0, device=CPU)
    assert not hasattr(model.encoder, "experts")
    model, _, _, _ = IFC(**TINY, experts="off").build(many, seed=0, device=CPU)
    assert not hasattr(model.encoder, "experts")
    model, _, _, _ = IFC(**TINY).build(many, seed=0, device=CPU)
    assert len(model.encoder.experts) == 4  # default: always on


def test_attention_changes_the_encoder_gradient(built, data):
    model, fairness, coding, centroids = built
    encoder = model.encoder
    base = trunk_gradient(model, fairness, coding, data, centroids)
    assert encoder.query.grad is not None and encoder.query.grad.abs().sum() > 0
    assert all(k.weight.grad.abs().sum() > 0 for k in encoder.keys)
    weights = encoder.last_attention
    assert weights.shape == (96, 2) and weights.std(0).max() > 0  # input-dependent
    with torch.no_grad():
        encoder.query.add_(torch.ones_like(encoder.query))
    moved = trunk_gradient(model, fairness, coding, data, centroids)
    assert (moved - base).abs().max() > 1e-6


def test_training_steps_discriminators_experts_and_attention(data):
    method = IFC(**TINY, experts="on")
    model, fairness, _, recorder = method.build(data, seed=0, device=CPU)
    before_d = copy.deepcopy(fairness.state_dict())
    before_q = model.encoder.query.detach().clone()
    labels, _, history = train_multi_attribute(
        model, data, fairness, method.params, seed=0, device=CPU, alpha=0.04, beta=1.0, recorder=recorder,
    )
    assert labels.shape == (240,)
    changed = [k for k, v in fairness.state_dict().items() if k.endswith("weight") and not torch.equal(v, before_d[k])]
    assert any(k.startswith("joint_discriminator") for k in changed)
    assert all(any(k.startswith(f"attribute_discriminators.{s}") for k in changed) for s in range(2))
    assert not torch.equal(model.encoder.query.detach(), before_q)
    last = history[-1]
    assert np.isfinite(last["ifc_adv"]) and last["ifc_adv"] > 0 and last["fair_step_s"] > 0
    assert np.isclose(last["joint_mi"], last["mi_cg"], rtol=1e-4)  # explicit mode: L_fair = I(C; joint)


def test_fairness_modes_see_the_xor_cell():
    """Explicit mode = plug-in I(C; T_joint); attention mode catches XOR through the pair term
    although each per-attribute term is ~0."""
    gen = torch.Generator().manual_seed(0)
    g = torch.randint(0, 2, (2000, 2), generator=gen)
    xor = g[:, 0] ^ g[:, 1]
    q = torch.softmax(4 * F.one_hot(xor, 2).float() + torch.randn(2000, 2, generator=gen), 1)
    coding = JointCoding(g.numpy(), [2, 2], CPU)
    code = torch.as_tensor(coding.codes)
    explicit = IFCFairness(coding, 2, beta=1, gamma=0, eta=0, mode="explicit")
    attention = IFCFairness(coding, 2, beta=1, gamma=0, eta=0, mode="attention")
    joint = float(cluster_group_mi(cluster_group_table(q, code, 4)))
    singles = [float(cluster_group_mi(cluster_group_table(q, g[:, s], 2))) for s in range(2)]
    assert max(singles) < 0.01 < 0.3 < joint
    value_e = float(explicit(q, None, code, 4))  # β = 1, no adversary, η = 0
    value_a = float(attention(q, None, code, 4))
    assert np.isclose(value_e, joint, rtol=1e-5)
    assert 0.8 * joint < value_a <= joint + 1e-6  # the softmax weights pick the pair term


def test_soft_balance_matches_the_hard_metric_on_hard_assignments():
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 2, (500, 2))
    labels = rng.integers(0, 3, 500)
    coding = JointCoding(groups, [2, 2], CPU)
    q = F.one_hot(torch.as_tensor(labels), 3).double()
    soft = float(soft_intersectional_balance(q, torch.as_tensor(coding.codes), 4))
    assert np.isclose(soft, balance(labels, coding.codes), rtol=1e-6)


def cells(groups, index):
    _, counts = np.unique(groups[index], axis=0, return_counts=True)
    return counts


def test_resampling_balances_attribute_cells_without_labels():
    rng = np.random.default_rng(0)
    groups = np.stack([rng.choice(2, 1000, p=[0.7, 0.3]), rng.choice(3, 1000, p=[0.5, 0.3, 0.2])], 1)
    n_values = [2, 3]
    original = cells(groups, np.arange(1000))
    np.testing.assert_array_equal(resample_indices(groups, n_values, "none", 0), np.arange(1000))
    us = resample_indices(groups, n_values, "us", 0)
    assert len(np.unique(us)) == len(us) and (cells(groups, us) == original.min()).all()
    os_ = resample_indices(groups, n_values, "os", 0)
    assert set(np.unique(os_)) == set(range(1000))  # every row kept, duplicates added
    np.testing.assert_array_equal(cells(groups, os_), np.minimum(original.max(), (1.5 * original).astype(int)))
    bm = resample_indices(groups, n_values, "bm", 0)
    kept = groups[bm]
    shares = [np.bincount(kept[kept[:, 0] == c, 1], minlength=3) / (kept[:, 0] == c).sum() for c in range(2)]
    np.testing.assert_allclose(shares[0], shares[1], atol=0.01)  # attribute 1 given attribute 0 mimicked
    np.testing.assert_array_equal(resample_indices(groups, n_values, "bm", 0), bm)
    assert not np.array_equal(resample_indices(groups, n_values, "us", 1), us)
    np.testing.assert_array_equal(resample_indices(groups[:, :1], [2], "bm", 0), np.arange(1000))


@pytest.mark.parametrize("params", [dict(sampling="us"), dict(sampling="bm", experts="on"),
                                    dict(adversary="reverse", discriminator_norm="batch"),
                                    dict(sampling="none", fair_mode="attention", LambdaIntersectionalBalance=0.5)])
def test_tiny_runs_valid_and_deterministic(params, data):
    method = IFC(**TINY, **params)
    first, again = method.fit(data, 0, CPU), method.fit(data, 0, CPU)
    assert first.labels.shape == (240,) and first.labels.min() >= 0 and first.labels.max() < 3
    np.testing.assert_array_equal(first.labels, again.labels)
    assert all(np.isfinite(v) for row in first.history for v in row.values())


def test_one_attribute(data):
    one = data.primary_only()
    method = IFC(**TINY)
    model, fairness, _, _ = method.build(one, seed=0, device=CPU)
    assert fairness.joint_discriminator is None and len(model.encoder.experts) == 1
    out = method.fit(one, 0, CPU)
    assert out.labels.shape == (240,)
    # One expert with attention 1 is FCMI's head: the run is the experts-off run exactly.
    off = IFC(**TINY, experts="off").fit(one, 0, CPU)
    np.testing.assert_array_equal(out.labels, off.labels)
    np.testing.assert_array_equal(out.embedding, off.embedding)


def test_expert_heads_are_fcmis_head(data):
    """expert_form="head" (default): each expert is FCMI's 2-layer head (Linear, ReLU, Linear)
    on the encoder trunk; with one attribute the embedding at initialisation is FCMI's exactly
    (expert 1 is the backbone's own head, attention over one expert is 1), with two the second
    head is a fresh copy. expert_form="extra" adds a hidden layer per expert instead."""
    one = data.primary_only()
    x = torch.as_tensor(one.X[:64])
    plain, _, _, _ = IFC(**TINY, experts="off").build(one, seed=0, device=CPU)
    experts, _, _, _ = IFC(**TINY, experts="on").build(one, seed=0, device=CPU)
    plain.eval(), experts.eval()
    with torch.no_grad():
        torch.testing.assert_close(experts.encode(x), plain.encode(x), rtol=0, atol=0)
    two, _, _, _ = IFC(**TINY, experts="on").build(data, seed=0, device=CPU)
    heads = two.encoder.experts
    assert len(heads) == 2 and [type(m) for m in heads[0]] == [nn.Linear, nn.ReLU, nn.Linear]
    assert heads[1][0].weight.shape == heads[0][0].weight.shape and heads[1][2].weight.shape == heads[0][2].weight.shape
    assert not torch.equal(heads[0][0].weight, heads[1][0].weight)
    assert two.encoder.keys[0].in_features == heads[0][0].in_features  # keys read the trunk's output
    extra, _, _, _ = IFC(**TINY, experts="on", expert_form="extra").build(data, seed=0, device=CPU)
    trunk_out = extra.encoder.keys[0].in_features
    assert extra.encoder.experts[0][0].in_features == trunk_out == heads[0][2].in_features  # one layer deeper
    assert extra.encoder.experts[0][0].out_features == TINY["expert_hidden"]


def test_parameter_validation():
    with pytest.raises(ParameterError, match="sampling"):
        IFC(sampling="labels")
    with pytest.raises(ParameterError, match="experts must be one of auto, on, off"):
        IFC(experts=True)
    with pytest.raises(ParameterError, match="expert_form must be one of head, extra"):
        IFC(expert_form="deep")
    with pytest.raises(ParameterError, match="adversary must be one of confusion, reverse"):
        IFC(adversary="grl")
    with pytest.raises(ParameterError, match="discriminator_norm must be one of none, batch"):
        IFC(discriminator_norm="layer")
    with pytest.raises(ParameterError, match="fair_mode"):
        IFC(fair_mode="implicit")
    with pytest.raises(ParameterError, match="LambdaFair"):
        IFC(LambdaFair=-1)
    assert IFC.multi_attribute and IFC().params["LambdaFair"] == 0.2 and IFC().params["LambdaClu"] == 0.04


def test_default_adversary_keeps_the_fairness_term_working_on_real_digits():
    """digits-reversed (1,000 real images, 10 epochs): the default IFC (confusion adversary,
    no BatchNorm, no experts for one attribute) lowers I(C;G) against the same run without its
    fairness term, and against the configuration used before these options (experts on,
    gradient reversal, BatchNorm discriminators), which leaves every cluster one group."""
    data = registry.datasets.get("digits-reversed")().load()
    idx = np.sort(np.random.default_rng(0).choice(data.n_samples, 1000, replace=False))
    digits = dataclasses.replace(data, X=data.X[idx], y=data.y[idx], groups=data.groups[idx])
    run = dict(epochs=10, warmup_epochs=2, batch_size=128, kmeans_iter=30, kmeans_restarts=2, width=0.25)

    def mi(**params):
        method = IFC(**run, **params)
        return mutual_information(method.fit(method.prepare_input(digits.clustering_input()), 0, CPU).labels,
                                  digits.groups[:, 0])

    default, unfair = mi(), mi(LambdaFair=0.0)
    old = mi(experts="on", expert_form="extra", adversary="reverse", discriminator_norm="batch")
    assert unfair > 0.3 and old > 0.3  # log 2 = 0.69: clusters follow the groups
    assert default < 0.3 * min(unfair, old)
