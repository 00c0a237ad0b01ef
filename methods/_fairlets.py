"""Tree-based (p, q)-fairlet decomposition of Backurs et al. (ICML 2019, "Scalable Fair
Clustering"), written from the paper and the description of its MIT reference code
(talwagner/fair_clustering, ``fairtree.py``); no code copied.

Two colours (0 "red", 1 "blue"). A set with r red and b blue points is (p, q)-balanced when
r = b = 0 or min(r/b, b/r) >= p/q (p <= q, coprime). A *fairlet* is a balanced set of at most
p + q points (Chierichetti et al., NeurIPS 2017, Lemma 3 sizes).

1. :func:`build_quadtree` -- randomly shifted quadtree (the paper's tree embedding): the
   bounding box is doubled and shifted by u_d ~ U[0, spread_d]; every cell is halved in all
   dimensions at once (so a node has up to 2^d occupied children); a node is a leaf when it
   holds at most one point, when its cells are smaller than ``eps`` in every dimension, or at
   ``max_levels``. The algorithm leaves the order of a node's children open, yet it decides
   which points the node pairs up when its children are single points -- the usual case in
   high dimension, where the root splits in all d dimensions at once. ``child_order="data"``
   lists them by first appearance in the data, as the reference code's dict does; "key" by
   cell bit pattern, which does not depend on how the rows of the dataset are sorted.
2. :func:`tree_fairlets` -- top-down decomposition: at each node, take from each child the
   fewest points that leave the child (p, q)-balanced and make the taken points balanced
   (phase 1: points that must go; phase 2: points that may go, until the taken set is
   balanced; phase 3: the unsaturated remainder of children), cut the taken points into
   fairlets, and recurse into the children. Linear in n per tree level.
3. :func:`fairlet_medoids` -- each fairlet's centre is its member minimising the sum of
   Euclidean distances to the other members (k-median cost).
"""
from __future__ import annotations

from math import gcd

import numpy as np
import torch


def balanced(p: int, q: int, r, b):
    """(p, q)-balance of (r, b) counts (vectorised over numpy arrays)."""
    r, b = np.asarray(r), np.asarray(b)
    return ((r == 0) & (b == 0)) | ((r > 0) & (b > 0) & (np.minimum(r, b) * q >= np.maximum(r, b) * p))


def best_ratio(counts, max_q: int) -> tuple[int, int]:
    """Largest p/q <= min/max of the two colour counts with q <= max_q (coprime p <= q)."""
    lo, hi = sorted(int(c) for c in counts)
    if lo == 0:
        return 0, 1
    best = (1, max_q)
    for q in range(1, max_q + 1):
        p = min(q, lo * q // hi)
        if p >= 1 and p * best[1] > best[0] * q:
            best = (p, q)
    g = gcd(*best)
    return best[0] // g, best[1] // g


class QuadTree:
    """Nodes 0..m-1 (0 is the root); ``children[v]``; the points under v are
    ``order[start[v]:end[v]]`` (depth-first order, so a node's range is the concatenation of
    its children's ranges)."""

    def __init__(self, children, leaf_points, n):
        m = len(children)
        self.children = children
        self.start = np.zeros(m, dtype=np.int64)
        self.end = np.zeros(m, dtype=np.int64)
        order, count, stack = [], 0, [(0, False)]
        while stack:
            v, closing = stack.pop()
            if closing:
                self.end[v] = count
                continue
            self.start[v] = count
            stack.append((v, True))
            if children[v]:
                stack.extend((c, False) for c in reversed(children[v]))
            else:
                order.append(leaf_points[v])
                count += len(leaf_points[v])
        self.order = np.concatenate(order).astype(np.int64)
        assert self.order.size == n

    @property
    def n_nodes(self) -> int:
        return len(self.children)

    def depth(self) -> int:
        level, frontier = 0, [0]
        while frontier:
            frontier = [c for v in frontier for c in self.children[v]]
            level += 1
        return level


def build_quadtree(
    X: np.ndarray, rng: np.random.Generator, max_levels: int = 0, eps: float = 1e-4, child_order: str = "data"
) -> QuadTree:
    """Randomly shifted quadtree of the rows of X (n, d); see the module docstring.
    ``child_order``: "data" (first appearance, as the reference) or "key" (cell bit pattern)."""
    X = np.asarray(X, dtype=np.float64)
    n, d = X.shape
    lower = X.min(0)
    spread = X.max(0) - lower
    shift = rng.uniform(0.0, 1.0, size=d) * spread
    Xs = X + shift  # shifted points live in [lower, lower + 2 spread]
    side = 2.0 * spread
    children: list[list[int]] = [[]]
    leaf_points: dict[int, np.ndarray] = {}
    frontier = [(0, np.arange(n), lower + side / 2.0)]  # (node, points, cell midpoint)
    level = 1
    while frontier:
        too_small = side.max() <= eps or (max_levels and level >= max_levels)
        nxt = []
        for node, pts, mid in frontier:
            if len(pts) <= 1 or too_small:
                leaf_points[node] = pts
                continue
            low_half = Xs[pts] <= mid
            keys = np.packbits(low_half, axis=1)
            keys = np.ascontiguousarray(keys).view(np.dtype((np.void, keys.shape[1]))).ravel()
            _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
            inverse = inverse.reshape(-1)
            if child_order == "data":  # children by first appearance of one of their points
                rank = np.empty(len(first), dtype=np.int64)
                rank[np.argsort(first, kind="stable")] = np.arange(len(first))
                inverse, first = rank[inverse], np.sort(first)
            by_child = np.argsort(inverse, kind="stable")
            bounds = np.searchsorted(inverse[by_child], np.arange(len(first) + 1))
            for c in range(len(first)):
                sub = pts[by_child[bounds[c] : bounds[c + 1]]]
                child = len(children)
                children.append([])
                children[node].append(child)
                child_mid = np.where(low_half[first[c]], mid - side / 4.0, mid + side / 4.0)
                if len(sub) <= 1:
                    leaf_points[child] = sub
                else:
                    nxt.append((child, sub, child_mid))
        frontier = nxt
        side = side / 2.0
        level += 1
    return QuadTree(children, leaf_points, n)


class _Fairlets:
    """Accumulates fairlets as a fairlet id per point."""

    def __init__(self, n):
        self.of = np.full(n, -1, dtype=np.int64)
        self.count = 0

    def add(self, members: np.ndarray):
        self.of[members] = self.count
        self.count += 1

    def add_many(self, blocks: np.ndarray):
        """blocks: (t, s) array, one fairlet per row."""
        t = blocks.shape[0]
        if t:
            self.of[blocks] = self.count + np.arange(t)[:, None]
            self.count += t


def basic_fairlets(p: int, q: int, reds: np.ndarray, blues: np.ndarray, out: _Fairlets) -> None:
    """Cut a (p, q)-balanced set into fairlets of at most p + q points (Chierichetti et al.,
    Lemma 3): first (q majority, p minority) fairlets while the excess of the majority allows,
    then at most one fairlet absorbing the remaining excess, then one-to-one pairs."""
    if len(reds) < len(blues):
        reds, blues = blues, reds
    R, B = len(reds), len(blues)
    if R + B == 0:
        return
    assert balanced(p, q, R, B), f"unbalanced input to the basic decomposition: {R}, {B}"
    t = min((R - B) // (q - p), R // q, B // p) if q > p else 0
    out.add_many(np.concatenate([reds[: t * q].reshape(t, q), blues[: t * p].reshape(t, p)], axis=1))
    reds, blues = reds[t * q :], blues[t * p :]
    R, B = len(reds), len(blues)
    if 0 < R + B <= p + q:
        out.add(np.concatenate([reds, blues]))
        return
    excess = R - B
    if excess > 0:
        out.add(np.concatenate([reds[: excess + p], blues[:p]]))
        reds, blues = reds[excess + p :], blues[p:]
    out.add_many(np.stack([reds, blues], axis=1))


def _split_counts(p: int, q: int, R: np.ndarray, B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How many red / blue points to keep in each child (the rest are taken up to the node)."""
    R, B = R.copy(), B.copy()
    # Phase 1: points that must leave a child for it to be balanced.
    red_major = R >= B
    must_r = np.where(red_major, np.maximum(0, R - (B * q) // p), 0)
    must_b = np.where(~red_major, np.maximum(0, B - (R * q) // p), 0)
    R -= must_r
    B -= must_b
    NR, NB = int(must_r.sum()), int(must_b.sum())
    # Phase 2: points that may leave a child (keeping it balanced) until the taken set is balanced.
    if NR >= NB:
        missing = max(0, -(-NR * p // q) - NB)
        may = B - (-(-R * p // q))
        take = np.clip(missing - (np.cumsum(may) - may), 0, may)
        B -= take
        NB += int(take.sum())
    else:
        missing = max(0, -(-NB * p // q) - NR)
        may = R - (-(-B * p // q))
        take = np.clip(missing - (np.cumsum(may) - may), 0, may)
        R -= take
        NR += int(take.sum())
    # Phase 3: the unsaturated remainders of children, in order, until the taken set is balanced.
    if not balanced(p, q, NR, NB):
        red_major = R >= B
        sat = np.where(red_major, R // q, B // q)
        ex_r = R - np.where(red_major, q, p) * sat
        ex_b = B - np.where(red_major, p, q) * sat
        cr = NR + np.concatenate([[0], np.cumsum(ex_r)])
        cb = NB + np.concatenate([[0], np.cumsum(ex_b)])
        ok = np.flatnonzero(balanced(p, q, cr, cb))
        assert ok.size, "phase 3 could not balance the node"
        j = int(ok[0])
        R[:j] -= ex_r[:j]
        B[:j] -= ex_b[:j]
        NR, NB = int(cr[j]), int(cb[j])
    assert balanced(p, q, NR, NB)
    return R, B


def tree_fairlets(tree: QuadTree, colors: np.ndarray, p: int, q: int) -> tuple[np.ndarray, int]:
    """(p, q)-fairlet decomposition along ``tree``; returns (fairlet id per point, count)."""
    colors = np.asarray(colors)
    n = colors.shape[0]
    assert 1 <= p <= q
    n_red = int((colors == 0).sum())
    assert balanced(p, q, n_red, n - n_red), "the data are less balanced than the target p/q"
    out = _Fairlets(n)
    done = np.zeros(n, dtype=bool)

    def available(v):
        pts = tree.order[tree.start[v] : tree.end[v]]
        pts = pts[~done[pts]]
        return pts[colors[pts] == 0], pts[colors[pts] != 0]

    stack = [0]
    while stack:
        v = stack.pop()
        kids = tree.children[v]
        if not kids:
            reds, blues = available(v)
            basic_fairlets(p, q, reds, blues, out)
            done[reds] = True
            done[blues] = True
            continue
        parts = [available(c) for c in kids]
        R = np.array([len(r) for r, _ in parts], dtype=np.int64)
        B = np.array([len(b) for _, b in parts], dtype=np.int64)
        if R.sum() + B.sum() == 0:
            continue
        keep_r, keep_b = _split_counts(p, q, R, B)
        taken_r = np.concatenate([r[k:] for (r, _), k in zip(parts, keep_r)])
        taken_b = np.concatenate([b[k:] for (_, b), k in zip(parts, keep_b)])
        basic_fairlets(p, q, taken_r, taken_b, out)
        done[taken_r] = True
        done[taken_b] = True
        stack.extend(c for c, kr, kb in zip(kids, keep_r, keep_b) if kr + kb > 0)
    assert (out.of >= 0).all(), "some points were left out of every fairlet"
    return out.of, out.count


def fairlet_medoids(X: torch.Tensor, fairlet_of: np.ndarray, n_fairlets: int) -> tuple[np.ndarray, float]:
    """Index of each fairlet's medoid (sum of Euclidean distances) and the decomposition's
    k-median cost Σ_points ||x - medoid(fairlet(x))||."""
    order = np.argsort(fairlet_of, kind="stable")
    sizes = np.bincount(fairlet_of, minlength=n_fairlets)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    centre = np.zeros(n_fairlets, dtype=np.int64)
    cost = 0.0
    for s in np.unique(sizes):
        ids = np.flatnonzero(sizes == s)
        members = order[offsets[ids][:, None] + np.arange(s)[None, :]]  # (f, s)
        step = max(1, 2**24 // max(1, s * s * X.shape[1]))
        for a in range(0, len(ids), step):
            m = members[a : a + step]
            pts = X[torch.as_tensor(m.reshape(-1), device=X.device)].reshape(len(m), s, -1)
            dist = torch.cdist(pts.double(), pts.double()).sum(2)  # (f, s): sum of distances from each member
            best = dist.argmin(1).cpu().numpy()
            centre[ids[a : a + step]] = m[np.arange(len(m)), best]
            cost += float(dist.min(1).values.sum())
    return centre, cost
