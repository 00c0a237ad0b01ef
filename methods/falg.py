"""FAlg: fair assignment by linear programming (Bera, Chakrabarty, Flores, Negahbani, NeurIPS 2019).

Given centres S (here k-means centres) and colours ℓ (one per value of each sensitive
attribute; a point has Δ colours, one per attribute), the paper's fair-assignment LP with
p = 2 (k-means cost) is

    min Σ_j Σ_i d(j, i)² x_ij   s.t.  Σ_i x_ij = 1 (every point j),  0 <= x_ij <= 1,
        β_ℓ Σ_j x_ij  <=  Σ_{j ∈ ℓ} x_ij  <=  α_ℓ Σ_j x_ij   (every centre i, colour ℓ),

with the paper's experimental bounds β_ℓ = r_ℓ (1 − δ), α_ℓ = r_ℓ / (1 − δ), r_ℓ the share of
colour ℓ in the data (δ = 0.2 by default; it reproduces FCMI's FAlg Balance on MNIST-USPS,
9.5 %, and Color-Reverse MNIST, 66.6 %).

Sparse formulation (what is solved): auxiliary variables t_iℓ = Σ_{j∈ℓ} x_ij (equality rows)
turn each fairness row into a row of 1 + V_a entries (Σ_j x_ij = Σ_{v} t_{i,(a,v)} within an
attribute a). Variables n·k + k·C (C = number of colours), equality rows n + k·C, inequality
rows 2·k·C, non-zeros ≈ (1 + Δ) n k + 2 k Σ_a V_a² -- 1.35 M non-zeros for MNIST-USPS
(n = 67,291, k = 10). Solved exactly by HiGHS (``scipy.optimize.linprog``), no aggregation.

Rounding (iterative rounding as the paper describes it; the details below are reconstructed
from that description, not from its code, which needs CPLEX): with T_iℓ, T_i the
LP's colour masses and sizes, solve the LP with the count bounds ⌊T_iℓ⌋ <= Σ_{j∈ℓ} x_ij <=
⌈T_iℓ⌉ and ⌊T_i⌋ <= Σ_j x_ij <= ⌈T_i⌉ (the LP solution is feasible, so the cost does not
rise); fix points whose x is integral, delete zero variables, and when a vertex has no
integral point, drop every bound constraint with at most 2(Δ + 1) fractional variables;
repeat. Each dropped constraint moves its count by less than 2(Δ + 1); the paper's
guarantee is an additive violation of at most 4Δ + 3 of the fairness constraints. With one
attribute (Δ = 1) the bound system is a pair of laminar families (totally unimodular), so
the first vertex is integral: counts within ±1 of the LP's, no constraint dropped. The points
the LP already assigned integrally are fixed before rounding (only its few fractional points
enter the rounding LPs); the analysis is unchanged, since the rest of the LP solution stays
feasible for them.
"""
from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp
import torch
from scipy.optimize import linprog

from bench import Method, MethodOutput, ParameterError, register_method
from bench.kmeans import kmeans

TOL = 1e-6


def proportion_bounds(groups: np.ndarray, n_values, delta: float) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per attribute: (β, α) arrays over its values, β = r(1 − δ), α = r / (1 − δ) (Bera et al.,
    experiments; α is capped at 1)."""
    lo, hi = [], []
    for a, V in enumerate(n_values):
        r = np.bincount(groups[:, a], minlength=V) / groups.shape[0]
        lo.append(r * (1.0 - delta))
        hi.append(np.minimum(1.0, r / (1.0 - delta)))
    return lo, hi


class _Structure:
    """Colour bookkeeping: colour index ℓ = offset[a] + value for attribute a."""

    def __init__(self, groups: np.ndarray, n_values, k: int):
        self.groups, self.n_values, self.k = groups, list(n_values), k
        self.offset = np.concatenate([[0], np.cumsum(self.n_values)]).astype(np.int64)
        self.C = int(self.offset[-1])
        self.colours = groups + self.offset[:-1][None, :]  # (n, Δ) colour indices


def _assignment_rows(pj, pi, m, s: _Structure, local_colours):
    """A_eq blocks for the variables x_p (pairs p = (point pj, centre pi)) and t (k·C):
    Σ_i x = 1 per point, and t_iℓ − Σ_{j∈ℓ} x_ij = 0."""
    P, kC = len(pj), s.k * s.C
    rows = [pj]
    cols = [np.arange(P)]
    vals = [np.ones(P)]
    for a in range(local_colours.shape[1]):
        rows.append(m + pi * s.C + local_colours[pj, a])
        cols.append(np.arange(P))
        vals.append(-np.ones(P))
    rows.append(m + np.arange(kC))
    cols.append(P + np.arange(kC))
    vals.append(np.ones(kC))
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)


def solve_fair_lp(cost: np.ndarray, s: _Structure, lo, hi, method: str = "highs"):
    """The FA-LP on all n·k variables; returns (x (n, k), t (k, C), objective)."""
    n, k = cost.shape
    P, kC = n * k, k * s.C
    pj, pi = np.repeat(np.arange(n), k), np.tile(np.arange(k), n)
    r, c, v = _assignment_rows(pj, pi, n, s, s.colours)
    A_eq = sp.csr_matrix((v, (r, c)), shape=(n + kC, P + kC))
    b_eq = np.concatenate([np.ones(n), np.zeros(kC)])
    ur, uc, uv, row = [], [], [], 0
    for a, V in enumerate(s.n_values):
        for i in range(k):
            block = P + i * s.C + s.offset[a] + np.arange(V)
            for val in range(V):
                own = P + i * s.C + s.offset[a] + val
                # β Σ_v t_iv − t_iℓ <= 0   and   t_iℓ − α Σ_v t_iv <= 0
                ur += [row] * V + [row] + [row + 1] * V + [row + 1]
                uc += list(block) + [own] + list(block) + [own]
                uv += [lo[a][val]] * V + [-1.0] + [-hi[a][val]] * V + [1.0]
                row += 2
    A_ub = sp.csr_matrix((uv, (ur, uc)), shape=(row, P + kC))
    bounds = np.column_stack([np.zeros(P + kC), np.concatenate([np.ones(P), np.full(kC, np.inf)])])
    res = linprog(np.concatenate([cost.ravel(), np.zeros(kC)]), A_ub=A_ub, b_ub=np.zeros(row),
                  A_eq=A_eq, b_eq=b_eq, bounds=bounds, method=method)
    if res.status != 0:
        raise RuntimeError(f"falg: the fair-assignment LP failed: {res.message}")
    x = res.x[:P].reshape(n, k)
    return x, res.x[P:].reshape(k, s.C), float(res.fun)


def _clean(x: np.ndarray) -> np.ndarray:
    x = np.where(x < TOL, 0.0, np.where(x > 1 - TOL, 1.0, x))
    return x / x.sum(1, keepdims=True)


def iterative_rounding(x: np.ndarray, cost: np.ndarray, s: _Structure, max_rounds: int = 1000):
    """Round a fractional FA-LP solution (see the module docstring). Returns (labels, info)."""
    n, k = x.shape
    x = _clean(x)
    T, S = x.T @ _onehot(s), x.sum(0)
    bnd_t = np.stack([np.floor(T), np.ceil(T)], axis=-1)  # (k, C, 2)
    bnd_s = np.stack([np.floor(S), np.ceil(S)], axis=-1)  # (k, 2)
    active_t, active_s = np.ones((k, s.C), bool), np.ones(k, bool)
    labels = np.full(n, -1, dtype=np.int64)
    threshold = 2 * (s.colours.shape[1] + 1)
    rounds = dropped = 0
    first = True
    cur = x  # current values of the unfixed rows (full n × k array, rows of fixed points ignored)
    while True:
        free = labels < 0
        whole = free & (cur.max(1) >= 1 - TOL)
        labels[whole] = cur[whole].argmax(1)
        free = labels < 0
        if not free.any():
            break
        if not whole.any() and not first:
            # vertex without an integral point: drop the bound constraints with few fractional variables
            J = np.flatnonzero(free)
            frac = (cur[J] > TOL).astype(float)  # (|J|, k) fractional variables
            n_t = frac.T @ _onehot(s)[J]  # (k, C): fractional variables in each bound constraint
            n_s = frac.sum(0)
            drop_t, drop_s = active_t & (n_t <= threshold), active_s & (n_s <= threshold)
            if not drop_t.any() and not drop_s.any():  # cannot happen at a vertex; keep going safely
                cand = np.where(active_t, n_t, np.inf)
                drop_t = cand == cand.min()
            active_t &= ~drop_t
            active_s &= ~drop_s
            dropped += int(drop_t.sum() + drop_s.sum())
        first = False
        rounds += 1
        if rounds > max_rounds:
            raise RuntimeError("falg: iterative rounding did not converge")
        cur = _rounding_lp(cur, cost, s, labels, bnd_t, bnd_s, active_t, active_s)
    info = {"rounding_rounds": float(rounds), "dropped_constraints": float(dropped)}
    return labels, info


def _onehot(s: _Structure) -> np.ndarray:
    out = np.zeros((s.colours.shape[0], s.C))
    for a in range(s.colours.shape[1]):
        out[np.arange(len(out)), s.colours[:, a]] = 1.0
    return out


def _rounding_lp(cur, cost, s: _Structure, labels, bnd_t, bnd_s, active_t, active_s):
    """One LP of the iterative rounding over the unfixed points and their non-zero variables."""
    k, C = s.k, s.C
    J = np.flatnonzero(labels < 0)
    fixed = labels >= 0
    cnt_t = _counts_of(s, labels, fixed)
    cnt_s = np.bincount(labels[fixed], minlength=k).astype(float)
    sub = cur[J]
    lj, pi = np.nonzero(sub > TOL)
    P, m, kC = len(lj), len(J), k * C
    r, c, v = _assignment_rows(lj, pi, m, s, s.colours[J])
    # sizes: s_i − Σ_v t_{i,(0,v)} = 0
    V0 = s.n_values[0]
    r = np.concatenate([r, m + kC + np.arange(k), np.repeat(m + kC + np.arange(k), V0)])
    c = np.concatenate([c, P + kC + np.arange(k), P + (np.arange(k)[:, None] * C + np.arange(V0)).ravel()])
    v = np.concatenate([v, np.ones(k), -np.ones(k * V0)])
    A_eq = sp.csr_matrix((v, (r, c)), shape=(m + kC + k, P + kC + k))
    b_eq = np.concatenate([np.ones(m), np.zeros(kC + k)])
    t_lo = np.where(active_t, bnd_t[..., 0] - cnt_t, 0.0).ravel()
    t_hi = np.where(active_t, bnd_t[..., 1] - cnt_t, np.inf).ravel()
    s_lo = np.where(active_s, bnd_s[:, 0] - cnt_s, 0.0)
    s_hi = np.where(active_s, bnd_s[:, 1] - cnt_s, np.inf)
    bounds = np.column_stack([
        np.concatenate([np.zeros(P), np.maximum(t_lo, 0.0), np.maximum(s_lo, 0.0)]),
        np.concatenate([np.ones(P), t_hi, s_hi]),
    ])
    res = linprog(np.concatenate([cost[J[lj], pi], np.zeros(kC + k)]), A_eq=A_eq, b_eq=b_eq,
                  bounds=bounds, method="highs-ds")
    if res.status != 0:
        raise RuntimeError(f"falg: a rounding LP failed: {res.message}")
    out = np.zeros_like(cur)
    out[J[lj], pi] = res.x[:P]
    return out


def _counts_of(s: _Structure, labels, mask) -> np.ndarray:
    out = np.zeros((s.k, s.C))
    idx = np.flatnonzero(mask)
    for a in range(s.colours.shape[1]):
        np.add.at(out, (labels[idx], s.colours[idx, a]), 1.0)
    return out


def additive_violation(labels_or_x, s: _Structure, lo, hi) -> float:
    """max over centres i and colours ℓ of max(0, n_iℓ − α_ℓ n_i, β_ℓ n_i − n_iℓ), with n the
    (fractional or integral) colour counts: the paper's additive violation."""
    a = np.asarray(labels_or_x)
    counts = a.T @ _onehot(s) if a.ndim == 2 else _counts_of(s, a, np.ones(len(a), bool))
    worst = 0.0
    for att, V in enumerate(s.n_values):
        block = counts[:, s.offset[att] : s.offset[att] + V]
        size = block.sum(1, keepdims=True)
        worst = max(worst, float(np.max(block - hi[att][None] * size, initial=0.0)),
                    float(np.max(lo[att][None] * size - block, initial=0.0)))
    return worst


@register_method
class FairAssignment(Method):
    """Fair assignment LP on k-means centres (Bera et al., NeurIPS 2019); see :mod:`methods.falg`.

    k-means (bench.kmeans, seeded, on the flattened features) gives the centres, which stay
    fixed; the LP reassigns the points under per-colour lower/upper proportion bounds for every
    sensitive attribute at once (``multi_attribute``), then iterative rounding makes the
    assignment integral. Many groups are fine (HAR's 30 subjects). The LP runs on the CPU
    (HiGHS); k-means uses ``device``. The history records the LP and rounded costs (mean
    squared distance), the fractional and rounded additive violations, and timings."""

    name = "falg"
    description = "fair assignment LP (HiGHS) with per-group proportion bounds on k-means centres, then rounding"
    paper = "Bera et al., Fair Algorithms for Clustering, NeurIPS 2019"
    paper_name = "FAlg"
    parameters = {"delta": 0.2, "kmeans_n_init": 10, "kmeans_n_iter": 300, "lp_method": "highs"}
    test_parameters = {"kmeans_n_init": 2, "kmeans_n_iter": 20}
    uses_gpu = False
    many_groups = True
    multi_attribute = True
    fairness_aware = True
    version = "1"

    def validate(self):
        if not 0.0 <= self.params["delta"] < 1.0:
            raise ParameterError("falg: delta must be in [0, 1) (bounds r(1-delta) .. r/(1-delta))")
        if self.params["lp_method"] not in ("highs", "highs-ds", "highs-ipm"):
            raise ParameterError("falg: lp_method must be one of highs, highs-ds, highs-ipm")
        if self.params["kmeans_n_init"] < 1 or self.params["kmeans_n_iter"] < 1:
            raise ParameterError("falg: kmeans_n_init and kmeans_n_iter must be >= 1")

    def fit(self, data, seed, device):
        P = self.params
        t0 = time.perf_counter()
        X = torch.as_tensor(data.flat_features(), dtype=torch.float32).to(device)
        C, _ = kmeans(X, data.n_clusters, n_iter=P["kmeans_n_iter"], n_init=P["kmeans_n_init"], seed=seed)
        cost = torch.cdist(X.double(), C.double()).pow(2).cpu().numpy()
        t1 = time.perf_counter()
        n_values = [a.n_values for a in data.attributes]
        s = _Structure(data.groups, n_values, data.n_clusters)
        lo, hi = proportion_bounds(data.groups, n_values, P["delta"])
        scale = max(float(cost.mean()), 1e-12)  # conditioning only; the argmin is unchanged
        x, _, _ = solve_fair_lp(cost / scale, s, lo, hi, P["lp_method"])
        t2 = time.perf_counter()
        labels, info = iterative_rounding(x, cost / scale, s)
        t3 = time.perf_counter()
        n = len(labels)
        history = [{
            "lp_cost": float((x * cost).sum() / n),
            "rounded_cost": float(cost[np.arange(n), labels].sum() / n),
            "kmeans_cost": float(cost.min(1).sum() / n),
            "lp_violation": additive_violation(x, s, lo, hi),
            "rounded_violation": additive_violation(labels, s, lo, hi),
            "lp_fractional_points": float(((x > TOL) & (x < 1 - TOL)).any(1).sum()),
            **info,
            "seconds_kmeans": t1 - t0, "seconds_lp": t2 - t1, "seconds_rounding": t3 - t2,
        }]
        return MethodOutput(labels=labels, history=history)
