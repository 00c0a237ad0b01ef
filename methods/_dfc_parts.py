"""Loss terms and small modules of DFC (Li, Zhao & Liu, CVPR 2020), written from the facts in
``shared/reference/dfc.md`` §1.3–§2.7 (equation numbers as mapped in dfc.md §2.6):

* :class:`ClusterLayer` -- DEC's Student-t soft assignment A (dfc.md §1.3).
* :func:`target_distribution` -- the auxiliary target, Eq. (4), recomputed per group and per
  mini-batch (dfc.md §2 step 3).
* :func:`divergence` -- the clustering regulariser, Eq. (5): KL(P‖Q) (the paper and code),
  and the options of the MLRC reproduction: a CORRECT Jensen–Shannon (theirs reverses the KL
  directions, dfc.md §2.7) and Cauchy–Schwarz over the whole b×K matrices.
* :func:`structural_loss` -- structural preservation, Eq. (3): ‖QQᵀ − Q̂Q̂ᵀ‖_F².
* :func:`grad_reverse` / :func:`grl_coefficient` -- gradient reversal with the ramped
  coefficient λ(t) (dfc.md §1.4).
* :class:`Critic` -- the discriminator D on the soft assignment, Eq. (2) (dfc.md §1.4); a
  G-way softmax head for more than two groups is OUR extension.
* :func:`inv_lr` -- the per-step learning-rate schedule (dfc.md §3).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ClusterLayer(nn.Module):
    """DEC soft assignment: q_ik ∝ (1 + ‖z_i − μ_k‖²/α)^(−(α+1)/2), normalised over k.

    Returns log q (computed as a log-softmax, so q never underflows to an exact 0)."""

    def __init__(self, n_clusters: int, dim: int, alpha: float = 1.0, centers: torch.Tensor | None = None):
        super().__init__()
        self.alpha = float(alpha)
        self.centers = nn.Parameter(torch.empty(n_clusters, dim))
        if centers is None:
            nn.init.xavier_uniform_(self.centers)  # the "no pretrained centers" ablation
        else:
            with torch.no_grad():
                self.centers.copy_(centers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return student_t_log_assign(z, self.centers, self.alpha)


def student_t_log_assign(z: torch.Tensor, centers: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    d2 = (z[:, None, :] - centers[None, :, :]).pow(2).sum(-1)
    return torch.log_softmax(-(alpha + 1.0) / 2.0 * torch.log1p(d2 / alpha), dim=1)


@torch.no_grad()
def target_distribution(q: torch.Tensor) -> torch.Tensor:
    """Eq. (4): p_ik = (q_ik² / f_k) / Σ_k' (q_ik'² / f_k'), f_k = Σ_i q_ik over the rows given
    (DFC: one group's mini-batch). No gradient."""
    w = q.pow(2) / q.sum(0, keepdim=True)
    return w / w.sum(1, keepdim=True)


def kl_divergence(p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Σ_i Σ_k p_ik log(p_ik / q_ik) = KL(P‖Q), summed over rows (KLDivLoss(reduction="sum"))."""
    return (torch.xlogy(p, p) - p * log_q).sum()


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen–Shannon, ½KL(P‖M) + ½KL(Q‖M) with M = ½(P + Q), summed over rows: symmetric
    and at most log 2 per row. (The MLRC reproduction computed ½KL(M‖Q) + ½KL(M‖P), which is
    not JS; dfc.md §2.7.)"""
    log_m = torch.log(0.5 * (p + q))
    return 0.5 * (torch.xlogy(p, p) - p * log_m).sum() + 0.5 * (torch.xlogy(q, q) - q * log_m).sum()


def cs_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Cauchy–Schwarz divergence −log(Σ P⊙Q / sqrt(Σ P² · Σ Q²)) over the whole matrices
    (one scalar per group, as in the MLRC reproduction, dfc.md §2.7). ≥ 0, 0 iff P ∝ Q."""
    return -torch.log((p * q).sum() / torch.sqrt(p.pow(2).sum() * q.pow(2).sum()))


DIVERGENCES = ("KL", "JS", "CS")


def divergence(name: str, p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """The clustering regulariser D(P, Q) of one group's batch (Eq. 5 with KL)."""
    if name == "KL":
        return kl_divergence(p, log_q)
    if name == "JS":
        return js_divergence(p, log_q.exp())
    if name == "CS":
        return cs_divergence(p, log_q.exp())
    raise ValueError(f"unknown divergence {name!r}; accepted: {', '.join(DIVERGENCES)}")


def structural_loss(q: torch.Tensor, q_teacher: torch.Tensor) -> torch.Tensor:
    """Eq. (3) for one group: ‖Q Qᵀ − Q̂ Q̂ᵀ‖_F² (MSELoss(reduction="sum")); teacher detached."""
    q_teacher = q_teacher.detach()
    diff = q @ q.T - q_teacher @ q_teacher.T
    return diff.pow(2).sum()


def group_losses(log_q: torch.Tensor, q_teacher: torch.Tensor, bounds: list[int], div: str = "KL"):
    """L_c (Eq. 5) and L_s (Eq. 3) of a batch laid out group after group (rows bounds[g] to
    bounds[g+1] belong to group g): each averaged over the groups (½ Σ_g for two groups), the
    target of Eq. (4) built from each group's rows separately."""
    q = log_q.exp()
    l_c = l_s = log_q.new_zeros(())
    for a, b in zip(bounds[:-1], bounds[1:]):
        l_c = l_c + divergence(div, target_distribution(q[a:b]), log_q[a:b])
        l_s = l_s + structural_loss(q[a:b], q_teacher[a:b])
    n_groups = len(bounds) - 1
    return l_c / n_groups, l_s / n_groups


def soft_mutual_information(q: torch.Tensor, groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    """I(C;G) in nats of the soft cluster × group table p(k, g) = mean_i q_ik [g_i = g] (the
    quantity FCMI penalises; a diagnostic here, no gradient)."""
    with torch.no_grad():
        onehot = (groups[:, None] == torch.arange(n_groups, device=groups.device)).to(q.dtype)  # no value check, no sync
        joint = q.T @ onehot / q.shape[0]
        outer = joint.sum(1, keepdim=True) * joint.sum(0, keepdim=True)
        return (torch.xlogy(joint, joint) - joint * torch.log(outer.clamp_min(1e-30))).sum()


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, coeff):
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.coeff * grad, None


def grad_reverse(x: torch.Tensor, coeff=1.0) -> torch.Tensor:
    """Identity forward; the gradient is multiplied by −coeff on the way back. ``coeff``: a
    number, or a 0-d tensor (read at backward time: a captured step's schedule value)."""
    return _GradReverse.apply(x, coeff if torch.is_tensor(coeff) else float(coeff))


def grl_coefficient(t: int, total: int, alpha: float = 10.0, low: float = 0.0, high: float = 1.0) -> float:
    """λ(t) = 2(high−low)/(1+exp(−α t/T)) − (high−low) + low: 0 at t = 0, → 1 (dfc.md §1.4)."""
    return 2.0 * (high - low) / (1.0 + math.exp(-alpha * t / total)) - (high - low) + low


def inv_lr(base: float, t: int, total: int, gamma: float = 10.0, power: float = 0.75) -> float:
    """lr_t = base · (1 + γ t/T)^(−power): 0.166·base at t = T (dfc.md §3)."""
    return base * (1.0 + gamma * t / total) ** (-power)


class Critic(nn.Module):
    """D: K → 32 → 32 → out, ReLU and Dropout(0.5) between, Xavier-normal weights (dfc.md §1.4).

    Two groups (the paper): one logit, BCE with target 1 for group 0 and 0 for group 1
    (computed with logits; identical to sigmoid + BCELoss up to rounding). More groups (OUR
    extension): G logits and cross-entropy."""

    def __init__(self, n_clusters: int, n_groups: int, hidden: int = 32, dropout: float = 0.5):
        super().__init__()
        self.binary = n_groups == 2
        self.net = nn.Sequential(
            nn.Linear(n_clusters, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, 1 if self.binary else n_groups),
        )
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def loss(self, q: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        """Mean adversarial loss L_f of a batch of soft assignments ``q`` with groups ``groups``."""
        logits = self.net(q)
        if self.binary:
            return F.binary_cross_entropy_with_logits(logits[:, 0], (groups == 0).to(logits.dtype))
        return F.cross_entropy(logits, groups)
