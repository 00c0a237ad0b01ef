"""Dependence estimators D̂(A; T) behind one small interface, for infomin-style fairness terms.

Sources: the estimators of Scalable Infomin Learning (Chen, Sun, Li, Weller; NeurIPS 2022;
``cyz-ai/infomin``, described in ``shared/reference/ifc_infomin.md`` §B.3–B.4, no code copied)
and the exact plug-in I(C; T) of FCMI's ``InfoFairLoss`` (``fcmi.md`` §2.2, item 4), the
reference of the family (§C.2–C.3).

Interface (every estimator)::

    est = make_estimator("slice", dim_a, dim_t, device=device, seed=seed)
    est.fit(a.detach(), t)     # max-step: refit internals on detached tensors (no-op for some)
    d = est.penalty(a, t)      # min-step: a differentiable scalar in ``a`` only

``a`` (n, dim_a) is the clustering-side variable (soft assignment Q or embedding z), ``t``
(n, dim_t) the encoded sensitive attributes (one-hot columns, see :func:`encode_groups`).
``penalty`` detaches ``t`` and uses the fitted internals as constants (parametric critics are
called through detached copies of their weights), so its gradient reaches ``a`` only: fitted
parts are trained by ``fit`` alone, never by the encoder's loss. ``fit`` never back-propagates
into ``a``. Every estimator is ~0 under independence (TC is shifted by log 2 for that) and
finite when a one-hot column is empty in a batch (zero-variance columns standardise to 0).

Deviations from the infomin code, chosen and documented:

* Parametric critics (Rényi, TC, CLUB) keep one critic and one Adam optimiser for the whole
  run and take ``inner_steps`` full-batch steps per ``fit`` (the repo builds a fresh Adam per
  call and keeps the best weights on an 80/20 split, which needs host syncs each step).
* Distance correlation is the bias-corrected (U-centred, zero diagonal) dCor of Székely &
  Rizzo (2014), clamped at 0; the repo's U-centring keeps the diagonal.
* TC's penalty is log 2 − ℓ (the repo's −ℓ shifted by a constant, same gradient) so that
  independence reads ~0 and a perfect critic log 2.
* Sliced MI fits its CCA on a random 80 % of the batch (the repo: the first 80 %; our batches
  arrive sorted by group) and drops the repo's all-zero feature column.
* CLUB's default is the Gaussian q(t|a) of the repo; ``variant="categorical"`` is the softmax
  form of the note (§C.3) for one-hot T.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Estimator",
    "Pearson",
    "DistanceCorrelation",
    "SlicedMI",
    "NeuralRenyi",
    "NeuralTC",
    "CLUB",
    "PluginMI",
    "ESTIMATORS",
    "make_estimator",
    "encode_groups",
    "standardise",
]

STD_EPS = 1e-6


def standardise(x: torch.Tensor, eps: float = STD_EPS) -> torch.Tensor:
    """Column-wise (x − mean) / sqrt(var + eps) over the batch; a constant column gives 0."""
    x = x - x.mean(0, keepdim=True)
    return x / torch.sqrt(x.pow(2).mean(0, keepdim=True) + eps)


def _corr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of matching columns of x and y (both (n, m)) -> (m,)."""
    return (standardise(x) * standardise(y)).mean(0)


def encode_groups(groups: torch.Tensor, n_values: Sequence[int], mode: str, attribute: int = 0):
    """One-hot encoding of the sensitive attributes (ifc_infomin.md §C.2).

    ``groups``: (n, S) int tensor; ``n_values``: values per attribute. ``mode``:
    ``single`` (one-hot of attribute ``attribute``), ``joint`` (one-hot of the intersectional
    cell, ∏ n_values columns, code = mixed-radix index of the tuple, so cells absent from the
    data are empty columns) or ``concat`` (per-attribute one-hots side by side).
    Returns (T float (n, width), block sizes) -- the plug-in MI sums over blocks."""
    groups = groups.long()
    if groups.dim() == 1:
        groups = groups[:, None]
    n_values = [int(v) for v in n_values]
    if mode == "single":
        return F.one_hot(groups[:, attribute], n_values[attribute]).float(), [n_values[attribute]]
    if mode == "joint":
        code = torch.zeros_like(groups[:, 0])
        for s, v in enumerate(n_values):
            code = code * v + groups[:, s]
        width = int(np.prod(n_values))
        return F.one_hot(code, width).float(), [width]
    if mode == "concat":
        parts = [F.one_hot(groups[:, s], v).float() for s, v in enumerate(n_values)]
        return torch.cat(parts, 1), list(n_values)
    raise ValueError(f"unknown sensitive encoding {mode!r}; accepted: single, joint, concat")


class Estimator:
    """Base class. ``trainable`` estimators own modules fitted in :meth:`fit`."""

    name = ""
    trainable = False

    def __init__(self, dim_a: int, dim_t: int, *, device=None, seed: int = 0):
        self.dim_a, self.dim_t = int(dim_a), int(dim_t)
        self.device = torch.device(device or "cpu")
        self.seed = int(seed)
        self.generator = torch.Generator(device=self.device).manual_seed(self.seed)

    def fit(self, a: torch.Tensor, t: torch.Tensor) -> None:
        """Max-step on detached tensors (default: nothing to fit)."""

    def penalty(self, a: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def parameters(self) -> list[torch.Tensor]:
        """Fitted parameters (empty for closed-form estimators)."""
        return []

    def state_dict(self) -> dict:
        """What a resumed run needs (:mod:`bench.checkpoint`): the generator's state and that of
        every module and optimiser the estimator owns (slices and CCA weights are redrawn and
        refitted at every batch, so they are not state)."""
        state = {"generator": self.generator.get_state()}
        for name, value in sorted(vars(self).items()):
            if isinstance(value, (nn.Module, torch.optim.Optimizer)):
                state[name] = value.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        for name, value in vars(self).items():
            if isinstance(value, (nn.Module, torch.optim.Optimizer)):
                value.load_state_dict(state[name])

    def _build(self, factory):
        """Create a module from a seed of its own (independent of the global RNG)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            module = factory()
        return module.to(self.device)


class Pearson(Estimator):
    """mean_{a,b} |corr(A_a, T_b)| after batch standardisation (infomin ``mi/corr.py``, §B.4);
    ``reduce="max"`` takes the largest entry instead."""

    name = "pearson"

    def __init__(self, dim_a, dim_t, *, reduce: str = "mean", **kw):
        super().__init__(dim_a, dim_t, **kw)
        if reduce not in ("mean", "max"):
            raise ValueError("pearson: reduce must be mean or max")
        self.reduce = reduce

    def penalty(self, a, t):
        t = t.detach().to(a.dtype)
        c = (standardise(a).T @ standardise(t) / a.shape[0]).abs()
        return c.mean() if self.reduce == "mean" else c.max()


def _u_centre(d: torch.Tensor) -> torch.Tensor:
    """U-centred distance matrix (Székely & Rizzo 2014, zero diagonal)."""
    n = d.shape[0]
    row = d.sum(1, keepdim=True) / (n - 2)
    col = d.sum(0, keepdim=True) / (n - 2)
    tot = d.sum() / ((n - 1) * (n - 2))
    out = d - row - col + tot
    return out * (1 - torch.eye(n, dtype=d.dtype, device=d.device))


def _distances(x: torch.Tensor) -> torch.Tensor:
    """Euclidean distance matrix from the Gram matrix (O(n²) memory), zero diagonal."""
    norms = x.pow(2).sum(1)
    sq = (norms[:, None] + norms[None, :] - 2 * x @ x.T).clamp_min(0)
    off = 1 - torch.eye(x.shape[0], dtype=x.dtype, device=x.device)
    return torch.sqrt(sq + 1e-12) * off


class DistanceCorrelation(Estimator):
    """Bias-corrected distance correlation dCor(A, T) (§B.4, ``mi/dc.py``; Székely & Rizzo 2014):
    sqrt(max(0, (Ã·B̃) / sqrt((Ã·Ã)(B̃·B̃)))) with U-centred distance matrices. O(n²) memory:
    keep batches ≤ ~2048."""

    name = "dcor"

    def penalty(self, a, t):
        n = a.shape[0]
        if n < 4:
            raise ValueError("dcor needs at least 4 samples per batch")
        A = _u_centre(_distances(a))
        B = _u_centre(_distances(t.detach().to(a.dtype)))
        scale = 1.0 / (n * (n - 3))
        s_ab, s_aa, s_bb = (A * B).sum() * scale, (A * A).sum() * scale, (B * B).sum() * scale
        r2 = s_ab / torch.sqrt(s_aa.clamp_min(1e-12) * s_bb.clamp_min(1e-12))
        return torch.sqrt(r2.clamp_min(1e-12))


class SlicedMI(Estimator):
    """Sliced mutual information SI(A; T) as infomin computes it (§B.3, poster Theorem 1 and
    Algorithm 2, ``mi/slice.py``).

    ``fit`` (max-step): draw ``n_slices`` fresh unit directions for each side (Gaussian,
    normalised), features [tanh u, tanh² u, tanh³ u] of each standardised projection (the
    repo's all-zero column dropped: 3S features per side), then the top canonical pair of a
    ridge-regularised linear CCA (ridge 1e-3) solved in closed form (eigh + SVD, float64) on
    a random ``fit_fraction`` (80 %) of the detached batch (the repo takes the first 80 %; our
    batches arrive sorted by group, so a random subset is needed). ``penalty`` (min-step): the absolute
    Pearson correlation of the two canonical scores on the whole batch, with the same slices;
    slices and CCA weights are constants. Call ``fit`` every batch (slices redrawn each batch).
    In-sample bias: with 3S comparable to the CCA sample size the fitted correlation is large
    even under independence (the infomin defaults S = 100 at batch 500 are in that regime);
    the value on data not used by the fit is the unbiased reading."""

    name = "slice"

    def __init__(self, dim_a, dim_t, *, n_slices: int = 100, ridge: float = 1e-3, fit_fraction: float = 0.8, **kw):
        super().__init__(dim_a, dim_t, **kw)
        self.n_slices, self.ridge, self.fit_fraction = int(n_slices), float(ridge), float(fit_fraction)
        self.theta_a = self.theta_t = self.w = self.v = None

    def _directions(self, dim):
        d = torch.randn(self.n_slices, dim, generator=self.generator, device=self.device)
        return F.normalize(d, dim=1)

    @staticmethod
    def _features(x, theta):
        h = torch.tanh(standardise(x) @ theta.T.to(x.dtype))
        return torch.cat([h, h * h, h * h * h], 1)

    def _inv_sqrt(self, c):
        vals, vecs = torch.linalg.eigh(c)
        return (vecs * vals.clamp_min(1e-12).rsqrt()) @ vecs.T

    @torch.no_grad()
    def fit(self, a, t):
        a, t = a.detach(), t.detach()
        self.theta_a, self.theta_t = self._directions(self.dim_a), self._directions(self.dim_t)
        m = max(4, int(self.fit_fraction * a.shape[0]))
        sub = torch.randperm(a.shape[0], generator=self.generator, device=self.device)[:m].to(a.device)
        fa = self._features(a[sub].double(), self.theta_a)
        ft = self._features(t[sub].double(), self.theta_t)
        fa, ft = fa - fa.mean(0), ft - ft.mean(0)
        eye = torch.eye(fa.shape[1], dtype=fa.dtype, device=fa.device)
        caa = fa.T @ fa / (m - 1) + self.ridge * eye
        ctt = ft.T @ ft / (m - 1) + self.ridge * eye
        cat = fa.T @ ft / (m - 1)
        ia, it = self._inv_sqrt(caa), self._inv_sqrt(ctt)
        u, _, vh = torch.linalg.svd(ia @ cat @ it)
        self.w = (ia @ u[:, 0]).to(a.dtype)
        self.v = (it @ vh[0]).to(a.dtype)

    def penalty(self, a, t):
        if self.w is None:
            raise RuntimeError("slice: call fit() before penalty()")
        sa = self._features(a, self.theta_a) @ self.w
        st = self._features(t.detach().to(a.dtype), self.theta_t) @ self.v
        return _corr(sa[:, None], st[:, None]).abs().squeeze(0)


def _mlp(sizes, last_bias=True, slope=0.2):
    layers = []
    for i, (p, q) in enumerate(zip(sizes[:-1], sizes[1:])):
        last = i == len(sizes) - 2
        layers.append(nn.Linear(p, q, bias=last_bias or not last))
        if not last:
            layers.append(nn.LeakyReLU(slope))
    return nn.Sequential(*layers)


class _Critic(Estimator):
    """A parametric estimator: one persistent critic, one persistent Adam, ``inner_steps``
    full-batch ascent steps on the estimator's objective per :meth:`fit`."""

    trainable = True

    def __init__(self, dim_a, dim_t, *, inner_steps: int = 3, inner_lr: float = 5e-4, hidden: int = 128, **kw):
        super().__init__(dim_a, dim_t, **kw)
        self.inner_steps, self.inner_lr, self.hidden = int(inner_steps), float(inner_lr), int(hidden)
        self.critic = self._build(self._make_critic)
        self.optimizer = torch.optim.Adam(self.critic.parameters(), lr=self.inner_lr)

    def _make_critic(self) -> nn.Module:  # pragma: no cover
        raise NotImplementedError

    def _objective(self, critic, a, t) -> torch.Tensor:  # pragma: no cover
        """Quantity the critic maximises; the penalty is a function of it."""
        raise NotImplementedError

    def parameters(self):
        return list(self.critic.parameters())

    def fit(self, a, t):
        a, t = a.detach(), t.detach().to(a.dtype)
        with torch.enable_grad():
            for _ in range(self.inner_steps):
                self.optimizer.zero_grad(set_to_none=True)
                (-self._objective(self.critic, a, t)).backward()
                self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)  # leave no gradient on the critic

    def _frozen(self):
        """Call the critic through detached copies of its weights (no gradient into it)."""
        params = {k: v.detach() for k, v in self.critic.named_parameters()}
        return lambda *args: torch.func.functional_call(self.critic, params, args)


class NeuralRenyi(_Critic):
    """Neural Rényi / HGR maximal correlation, one-sided as in infomin ``mi/renyi.py`` (§B.4):
    critic f_ω: A → R^{dim_t} ([dim_a, hidden=128, dim_t], LeakyReLU 0.2, bias-free output);
    D̂ = mean_b |corr(f_ω(A)_b, T_b)|, maximised by the critic, minimised by the encoder.
    For one-hot T each column's value is the HGR correlation with that indicator."""

    name = "hgr"

    def _make_critic(self):
        return _mlp([self.dim_a, self.hidden, self.dim_t], last_bias=False)

    def _objective(self, critic, a, t):
        return _corr(critic(a), t).abs().mean()

    def penalty(self, a, t):
        return self._objective(self._frozen(), a, t.detach().to(a.dtype))


class NeuralTC(_Critic):
    """Neural total correlation (infomin ``mi/tc.py``; "similar to MINE", §B.4): a critic on
    [a, t] ([dim_a+dim_t → 100 → ReLU → 100 → LeakyReLU → 2]) tells joint pairs (class 0) from
    pairs of two independent permutations (class 1); ℓ = ½[CE(joint, 0) + CE(shuffled, 1)].
    Penalty = log 2 − ℓ: ~0 when the critic cannot tell them apart, up to log 2. Permutations
    come from the estimator's own generator."""

    name = "tc"

    def __init__(self, dim_a, dim_t, *, inner_steps: int = 5, hidden: int = 100, **kw):
        super().__init__(dim_a, dim_t, inner_steps=inner_steps, hidden=hidden, **kw)

    def _make_critic(self):
        h = self.hidden
        return nn.Sequential(
            nn.Linear(self.dim_a + self.dim_t, h), nn.ReLU(), nn.Linear(h, h), nn.LeakyReLU(0.2), nn.Linear(h, 2)
        )

    def _loss(self, critic, a, t):
        n = a.shape[0]
        pa = torch.randperm(n, generator=self.generator, device=self.device)
        pt = torch.randperm(n, generator=self.generator, device=self.device)
        joint = critic(torch.cat([a, t], 1))
        marg = critic(torch.cat([a[pa], t[pt]], 1))
        zeros = torch.zeros(n, dtype=torch.long, device=a.device)
        return 0.5 * (F.cross_entropy(joint, zeros) + F.cross_entropy(marg, zeros + 1))

    def _objective(self, critic, a, t):
        return -self._loss(critic, a, t)

    def penalty(self, a, t):
        return math.log(2.0) - self._loss(self._frozen(), a, t.detach().to(a.dtype))


class CLUB(_Critic):
    """Contrastive log-ratio upper bound (vCLUB; infomin ``mi/club.py``, §B.4).

    ``variant="gaussian"`` (repo): q(t|a) = N(μ(a), diag exp ℓ(a)), μ and ℓ each
    [dim_a → hidden/2 → LeakyReLU → dim_t], ℓ through tanh; fit maximises
    Σ[−(μ−t)²/e^ℓ − ℓ]; Î = mean_i Σ_d [−(μ_i−t_i)² + mean_j (μ_i−t_j)²] / (2 e^{ℓ_i}).
    ``variant="categorical"`` (§C.3 ``club_cat``, one-hot T): q(t|a) = softmax classifier,
    Î = mean_i log q(t_i|a_i) − mean_{i,j} log q(t_j|a_i)."""

    name = "club"

    def __init__(self, dim_a, dim_t, *, variant: str = "gaussian", inner_steps: int = 5, hidden: int = 200, **kw):
        if variant not in ("gaussian", "categorical"):
            raise ValueError("club: variant must be gaussian or categorical")
        self.variant = variant
        super().__init__(dim_a, dim_t, inner_steps=inner_steps, hidden=hidden, **kw)

    def _make_critic(self):
        h = max(1, self.hidden // 2)
        if self.variant == "categorical":
            return _mlp([self.dim_a, h, self.dim_t])
        return nn.ModuleDict({"mu": _mlp([self.dim_a, h, self.dim_t]), "logvar": _mlp([self.dim_a, h, self.dim_t])})

    def _objective(self, critic, a, t):
        if self.variant == "categorical":
            return -F.cross_entropy(critic(a), t.argmax(1))
        mu, logvar = critic["mu"](a), torch.tanh(critic["logvar"](a))
        return (-(mu - t).pow(2) / logvar.exp() - logvar).sum(1).mean()

    def penalty(self, a, t):
        t = t.detach().to(a.dtype)
        params = {k: v.detach() for k, v in self.critic.named_parameters()}
        if self.variant == "categorical":
            logq = F.log_softmax(torch.func.functional_call(self.critic, params, (a,)), 1)
            share = t.mean(0)
            return ((logq * t).sum(1) - logq @ share).mean()
        mu = torch.func.functional_call(self.critic["mu"], _sub(params, "mu."), (a,))
        logvar = torch.tanh(torch.func.functional_call(self.critic["logvar"], _sub(params, "logvar."), (a,)))
        inv = 0.5 * torch.exp(-logvar)
        positive = -(mu - t).pow(2)
        # mean_j (mu_i - t_j)^2 = mu_i^2 - 2 mu_i E[t] + E[t^2]
        negative = mu.pow(2) - 2 * mu * t.mean(0) + t.pow(2).mean(0)
        return ((positive + negative) * inv).sum(1).mean()


def _sub(params, prefix):
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


class PluginMI(Estimator):
    """Exact plug-in I(C; T) from the soft contingency table (FCMI ``InfoFairLoss``, fcmi.md
    §2.2 item 4): O[k,g] = Σ_{i: g_i=g} Q_ik, entries ≤ 0 (groups absent from the batch)
    replaced by min(O>0)/10, p = O/ΣO, I = Σ p log(p / (p_k p_g)). ``a`` must be a soft
    assignment (rows on the simplex). With several one-hot blocks (``concat``) it returns
    Σ_blocks I(C; G_block)."""

    name = "plugin"

    def __init__(self, dim_a, dim_t, *, blocks: Sequence[int] | None = None, **kw):
        super().__init__(dim_a, dim_t, **kw)
        self.blocks = list(blocks) if blocks else [self.dim_t]
        if sum(self.blocks) != self.dim_t:
            raise ValueError(f"plugin: blocks {self.blocks} do not add up to dim_t={self.dim_t}")

    @staticmethod
    def table_mi(q: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        O = q.T @ onehot
        pos_min = torch.where(O > 0, O, torch.full_like(O, float("inf"))).min()
        O = torch.where(O > 0, O, pos_min / 10)
        p = O / O.sum()
        outer = p.sum(1, keepdim=True) * p.sum(0, keepdim=True)
        return (p * torch.log(p / outer)).sum()

    def penalty(self, a, t):
        t = t.detach().to(a.dtype)
        return sum(self.table_mi(a, block) for block in torch.split(t, self.blocks, dim=1))


ESTIMATORS = {
    cls.name: cls for cls in (Pearson, DistanceCorrelation, SlicedMI, NeuralRenyi, NeuralTC, CLUB, PluginMI)
}


def make_estimator(name: str, dim_a: int, dim_t: int, *, device=None, seed: int = 0, **options) -> Estimator:
    """Build the estimator registered as ``name`` (see :data:`ESTIMATORS`)."""
    try:
        cls = ESTIMATORS[name]
    except KeyError:
        raise ValueError(f"unknown estimator {name!r}; accepted: {', '.join(ESTIMATORS)}") from None
    return cls(dim_a, dim_t, device=device, seed=seed, **options)
