"""Components of IFC (intersectional fair clustering), built from the README's description.

The published IFC code does not implement its README's framework (``shared/reference/
ifc_infomin.md`` §A.3: it trains an autoencoder only; its discriminators take a detached
embedding and are never stepped, its attention vector is never optimised). Everything here
follows the design of §A.10, a PROPOSAL reconstructed from the README, the abstract and
FCMI, and is labelled so. No code is copied.

* :func:`grad_reverse` -- gradient-reversal layer (Ganin & Lempitsky, 2015).
* :class:`MultiExpertEncoder` / :func:`add_experts` -- one expert head per sensitive attribute
  on FCMI's encoder trunk, fused by input-dependent attention (§A.10 "multi-expert +
  attention fusion").
* :class:`Discriminator` -- the code's discriminator shape d→512→256→out, LeakyReLU(0.2),
  N(0, 0.02) init, with a softmax output over the attribute's values; the code's BatchNorm
  layers are optional (off by default, see :class:`IFCFairness`).
* :class:`IFCFairness` -- the fairness side of the loss: joint MI term (explicit over the
  intersectional cells, or the attention-weighted form), hierarchical discriminators (a
  confusion target, or gradient reversal), and the soft worst-case intersectional balance.
* :func:`resample_indices` -- over-/under-sampling and bias-mimicking over intersectional
  cells of the *sensitive attributes only* (§A.6: the original forms cells with the true
  class labels, a label leak that unsupervised clustering cannot use).
"""
from __future__ import annotations

import copy
import itertools
import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ._dfc_parts import grad_reverse  # one gradient-reversal layer for DFC and IFC
from ._fcmi_loop import cluster_group_mi, cluster_group_table

__all__ = [
    "grad_reverse",
    "MultiExpertEncoder",
    "add_experts",
    "Discriminator",
    "IFCFairness",
    "soft_intersectional_balance",
    "resample_indices",
    "SAMPLING",
    "ADVERSARY",
    "DISCRIMINATOR_NORM",
    "EXPERT_FORMS",
]

SAMPLING = ("none", "os", "us", "bm")
ADVERSARY = ("confusion", "reverse")
DISCRIMINATOR_NORM = ("none", "batch")
EXPERT_FORMS = ("head", "extra")


class MultiExpertEncoder(nn.Module):
    """Shared trunk F, one expert head E_s per sensitive attribute, fused by attention
    a_i = softmax_s(q·k_s(h_i)/√d_a) with a learnable query q and one linear key k_s per
    expert: z_i = Σ_s a_is E_s(F(x_i)) (§A.10). The fused z is L2-normalised by the
    autoencoder's ``encode`` as FCMI's embedding is. ``last_attention`` keeps the batch's
    attention weights (detached) for logging."""

    def __init__(self, trunk: nn.Module, experts: Sequence[nn.Module], trunk_dim: int, key_dim: int = 32):
        super().__init__()
        self.trunk = trunk
        self.experts = nn.ModuleList(experts)
        self.keys = nn.ModuleList(nn.Linear(trunk_dim, key_dim) for _ in self.experts)
        self.query = nn.Parameter(torch.randn(key_dim) / math.sqrt(key_dim))
        self.key_dim = key_dim
        self.last_attention = None

    def attention(self, h: torch.Tensor) -> torch.Tensor:
        keys = torch.stack([k(h) for k in self.keys], 1)  # (B, S, d_a)
        return torch.softmax(keys @ self.query / math.sqrt(self.key_dim), dim=1)  # (B, S)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.trunk(x)
        experts = torch.stack([e(h) for e in self.experts], 1)  # (B, S, d)
        weights = self.attention(h)
        self.last_attention = weights.detach()
        return (weights.unsqueeze(-1) * experts).sum(1)


def _reinitialised_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with every layer's parameters drawn afresh (torch's default init,
    from the global RNG)."""
    twin = copy.deepcopy(module)
    for layer in twin.modules():
        if hasattr(layer, "reset_parameters"):
            layer.reset_parameters()
    return twin


def add_experts(model: nn.Module, n_experts: int, hidden: int = 256, key_dim: int = 32,
                form: str = "head") -> nn.Module:
    """Give an FCMI autoencoder ``n_experts`` expert heads fused by attention. Modifies and
    returns ``model``.

    * ``form="head"``: the experts are copies of FCMI's own 2-layer head, Linear(·→256) ReLU
      Linear(256→d) (§A.10: "2-layer MLP, hidden 256"), and the trunk is the encoder before
      it. The first expert is the head the backbone was built with, the others are re-initialised
      copies, so with one attribute the network is FCMI's (attention over one expert is 1).
    * ``form="extra"``: the experts, Linear(256→``hidden``) ReLU Linear(→d), replace only the
      last linear layer, so each adds a hidden layer to FCMI's encoder (our form before this
      option existed; its one-attribute run on digits-reversed collapsed, see
      :class:`methods.ifc.IFC`).
    """
    encoder = model.encoder
    if form == "head":
        head = encoder[-3:]
        if not (isinstance(head[0], nn.Linear) and isinstance(head[1], nn.ReLU) and isinstance(head[2], nn.Linear)):
            raise TypeError("add_experts(form='head') expects an encoder ending in Linear, ReLU, Linear")
        experts = [head] + [_reinitialised_copy(head) for _ in range(n_experts - 1)]
        model.encoder = MultiExpertEncoder(encoder[:-3], experts, head[0].in_features, key_dim)
        return model
    if form != "extra":
        raise ValueError(f"unknown expert form {form!r}; accepted: {', '.join(EXPERT_FORMS)}")
    last = encoder[-1]
    if not isinstance(last, nn.Linear):
        raise TypeError("add_experts expects an encoder ending in a Linear layer")
    experts = [
        nn.Sequential(nn.Linear(last.in_features, hidden), nn.ReLU(), nn.Linear(hidden, last.out_features))
        for _ in range(n_experts)
    ]
    model.encoder = MultiExpertEncoder(encoder[:-1], experts, last.in_features, key_dim)
    return model


class Discriminator(nn.Module):
    """Predicts an attribute (or the intersectional cell) from the embedding: the shape of the
    IFC code's discriminators (d→512→256, LeakyReLU 0.2, Linear weights N(0, 0.02)) with
    ``n_out`` logits instead of one. ``batchnorm=True`` adds the code's BatchNorm after each
    hidden Linear (the same Linear weights are drawn either way)."""

    def __init__(self, embed_dim: int, n_out: int, hidden: Sequence[int] = (512, 256), batchnorm: bool = False):
        super().__init__()
        layers, width = [], embed_dim
        for size in hidden:
            layers += [nn.Linear(width, size), *([nn.BatchNorm1d(size)] if batchnorm else []), nn.LeakyReLU(0.2)]
            width = size
        layers.append(nn.Linear(width, n_out))
        self.net = nn.Sequential(*layers)
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, z):
        return self.net(z)


def soft_intersectional_balance(q: torch.Tensor, code: torch.Tensor, n_cells: int) -> torch.Tensor:
    """Soft worst-case intersectional balance (the IFC code's ``LambdaIntersectionalBalance``
    loss is 1 − this, §A.3): O[k,t] = Σ_{i∈t} q_ik over the cells present in the batch, zeros
    → 1e-5, min_k(min_t O[k,t] / max_t O[k,t]). No host sync."""
    onehot = F.one_hot(code, n_cells).to(q.dtype)
    table = (q.T @ onehot).clamp_min(1e-5)
    present = onehot.sum(0) > 0
    inf = torch.full_like(table, math.inf)
    low = torch.where(present, table, inf).min(1).values
    high = torch.where(present, table, -inf).max(1).values
    return (low / high).min()


class IFCFairness(nn.Module):
    """The fairness side of IFC's loss, a callable for FCMI's loop (``penalty(q, h, code,
    n_cells)``), returning β·L_fair + γ·L_adv + η·L_IB (§A.10; the loop is run with weight 1).

    * L_fair ("adaptive"): ``explicit`` -- plug-in I(C; T_joint) from the soft table over the
      intersectional cells (FCMI's InfoFair with G replaced by the joint group);
      ``attention`` -- Σ_s a_s I(C;G_s) + Σ_{s<s'} a_ss' I(C; G_s×G_s'), a = softmax over the
      terms of Î.detach()/τ_a (a smooth maximum; learnable weights would collapse onto the
      smallest term). ``auto``: explicit when S ≤ ``explicit_max_attributes`` (3, the code's
      threshold), attention otherwise. I(C; T_joint) is always recorded (``joint_mi``).
    * L_adv: one discriminator D_s per attribute and one joint discriminator D_J over the
      cells (none when S = 1, where it would duplicate D_1), trained by the same optimiser to
      *minimise* their cross-entropy on z. ``adversary`` sets what the encoder does:

      - ``"confusion"`` (default; §A.10's alternative, the encoder pushing the discriminators'
        outputs to chance, here as a cross-entropy to the uniform distribution):
        L_adv = Σ_D [CE(D(sg(z)), t) + CE_uniform(sg(D)(z))], sg = stop-gradient: the first
        term trains D only, the second moves the encoder only. Bounded below by log|T| per
        discriminator at chance, so the encoder gains nothing by making D confidently wrong.
      - ``"reverse"`` (the README's gradient reversal): L_adv = Σ_D CE(D(GRL(z)), t); the
        encoder *maximises* the same cross-entropy that D minimises.
    * L_IB = 1 − :func:`soft_intersectional_balance`, on the loop's Q (τ = 0.1; the code
      used temperature 1).
    """

    def __init__(self, coding, embed_dim: int, *, beta: float, gamma: float, eta: float,
                 mode: str = "auto", explicit_max_attributes: int = 3, attention_temperature: float = 0.1,
                 adversary: str = "confusion", discriminator_norm: str = "none", recorder=None):
        super().__init__()
        self.coding = coding
        S = coding.n_attributes
        if mode == "auto":
            mode = "explicit" if S <= explicit_max_attributes else "attention"
        if mode not in ("explicit", "attention"):
            raise ValueError("IFC fairness mode must be auto, explicit or attention")
        if adversary not in ADVERSARY:
            raise ValueError(f"IFC adversary must be one of {', '.join(ADVERSARY)}")
        if discriminator_norm not in DISCRIMINATOR_NORM:
            raise ValueError(f"IFC discriminator_norm must be one of {', '.join(DISCRIMINATOR_NORM)}")
        self.mode, self.beta, self.gamma, self.eta = mode, float(beta), float(gamma), float(eta)
        self.adversary = adversary
        self.tau = float(attention_temperature)
        self.recorder = recorder
        bn = discriminator_norm == "batch"
        self.attribute_discriminators = nn.ModuleList(Discriminator(embed_dim, v, batchnorm=bn) for v in coding.n_values)
        self.joint_discriminator = Discriminator(embed_dim, coding.n_cells, batchnorm=bn) if S > 1 else None
        self.pairs = list(itertools.combinations(range(S), 2))

    def get_extra_state(self):
        """The step records ride along in ``state_dict`` (resumed runs, :mod:`bench.checkpoint`)."""
        return self.recorder.state_dict() if self.recorder is not None else None

    def set_extra_state(self, state):
        if self.recorder is not None and state is not None:
            self.recorder.load_state_dict(state)

    def joint_mi(self, q, code):
        return cluster_group_mi(cluster_group_table(q, code, self.coding.n_cells))

    def attention_fair(self, q, attrs):
        n_values = self.coding.n_values
        terms = [cluster_group_mi(cluster_group_table(q, attrs[:, s], v)) for s, v in enumerate(n_values)]
        for s, r in self.pairs:
            pair = attrs[:, s] * n_values[r] + attrs[:, r]
            terms.append(cluster_group_mi(cluster_group_table(q, pair, n_values[s] * n_values[r])))
        terms = torch.stack(terms)
        weights = torch.softmax(terms.detach() / self.tau, 0)
        return (weights * terms).sum()

    def adversarial(self, h, code, attrs):
        heads = [(d, attrs[:, s]) for s, d in enumerate(self.attribute_discriminators)]
        if self.joint_discriminator is not None:
            heads.append((self.joint_discriminator, code))
        if self.adversary == "reverse":
            z = grad_reverse(h)
            return sum(F.cross_entropy(d(z), target) for d, target in heads)
        loss = h.new_zeros(())
        for d, target in heads:
            loss = loss + F.cross_entropy(d(h.detach()), target)  # D learns the groups
            frozen = {name: p.detach() for name, p in d.named_parameters()}
            loss = loss - F.log_softmax(functional_call(d, frozen, (h,)), 1).mean()  # encoder: to chance
        return loss

    def forward(self, q, h, code, n_cells):
        if self.recorder is not None:
            self.recorder.start()
        attrs = self.coding.attributes(code)
        joint = self.joint_mi(q, code)
        fair = joint if self.mode == "explicit" else self.attention_fair(q, attrs)
        adv = self.adversarial(h, code, attrs) if self.gamma > 0 else fair.new_zeros(())
        ib = 1 - soft_intersectional_balance(q, code, self.coding.n_cells)
        total = self.beta * fair + self.gamma * adv + self.eta * ib
        if self.recorder is not None:
            self.recorder.stop(ifc_fair=fair, ifc_adv=adv, ifc_ib=ib, joint_mi=joint)
        return total


def resample_indices(groups: np.ndarray, n_values: Sequence[int], method: str, seed: int) -> np.ndarray:
    """Training rows after re-balancing the intersectional cells of the sensitive attributes
    (IFC ``--sampling_method``, §A.6, with cells from the attributes only, never labels).

    * ``none``: every row once.
    * ``os`` (over-sampling): every non-empty cell keeps all its rows and gains random
      duplicates up to min(largest cell, ⌊1.5 × its size⌋). The original draws the whole cell
      with replacement (a bootstrap that drops ~37 % of the largest cell); we keep every row.
    * ``us`` (under-sampling): every non-empty cell reduced to the smallest non-empty cell,
      without replacement.
    * ``bm`` (bias-mimicking, Qraitem et al., CVPR 2023): "class" = attribute 0, "bias" = the
      cell of the other attributes; every value of attribute 0 keeps its largest subset whose
      bias distribution equals a common target (closed form of the original's linear
      programme: λ = min_b n[c,b]/p(b), keep ⌊λ·p(b)⌋), so attribute 0 becomes independent of
      the others in the training set. Deviation: the original mimics each class's own
      distribution in one view per class and keeps the rows kept in every view; with two
      classes that intersection hands each class the *other* class's distribution (checked
      numerically) instead of equalising them, so we mimic one target, the pooled bias
      distribution. With one attribute there is no bias variable and ``bm`` keeps every row.

    Returns sorted row indices (repetitions for ``os``), from a generator seeded by ``seed``."""
    groups = np.asarray(groups, dtype=np.int64).reshape(len(groups), -1)
    n = groups.shape[0]
    if method == "none" or (method == "bm" and groups.shape[1] == 1):
        return np.arange(n)
    if method not in SAMPLING:
        raise ValueError(f"unknown sampling {method!r}; accepted: {', '.join(SAMPLING)}")
    rng = np.random.default_rng(seed)
    if method == "bm":
        return _bias_mimicking(groups, n_values, rng)
    _, cell = np.unique(groups, axis=0, return_inverse=True)
    cell = cell.reshape(-1)
    members = [rng.permutation(np.flatnonzero(cell == c)) for c in range(cell.max() + 1)]
    sizes = np.array([len(m) for m in members])
    kept = []
    for m in members:
        if method == "us":
            kept.append(m[: sizes.min()])
        else:
            target = min(sizes.max(), int(1.5 * len(m)))
            kept.append(np.concatenate([m, rng.choice(m, target - len(m), replace=True)]))
    return np.sort(np.concatenate(kept))


def _bias_mimicking(groups, n_values, rng):
    cls = groups[:, 0]
    radix = np.cumprod([1] + [int(v) for v in n_values[1:]][::-1])[:-1][::-1]
    bias = (groups[:, 1:] * radix).sum(1)
    n_cls, n_bias = int(n_values[0]), int(np.prod(n_values[1:]))
    counts = np.zeros((n_cls, n_bias), dtype=np.int64)
    np.add.at(counts, (cls, bias), 1)
    target = counts.sum(0) / counts.sum()  # pooled bias distribution
    support = target > 0
    keep = np.zeros_like(counts)
    for c in np.flatnonzero(counts.sum(1) > 0):
        lam = (counts[c, support] / target[support]).min()  # largest subset with that distribution
        keep[c] = np.minimum(counts[c], np.floor(lam * target + 1e-9).astype(np.int64))
    kept = []
    for c in range(n_cls):
        for b in range(n_bias):
            rows = np.flatnonzero((cls == c) & (bias == b))
            kept.append(rng.permutation(rows)[: keep[c, b]])
    return np.sort(np.concatenate(kept))
