"""How reliable is each dependence estimator's fairness gradient? A script, not a test.

    python benchmarks/estimator_gradients.py --dataset adult --estimators plugin pearson \\
        slice slice:n_slices=10 --strengths 0 0.25 0.5 1 2

The infomin methods descend β·D̂(Q; T) per mini-batch (``methods/infomin.py``). Whether that
makes a clustering fairer depends less on D̂'s value than on whether its *gradient* points
towards less dependence, batch after batch. This script measures that on a dataset's real
sensitive attributes, with no training in the way.

Model. One scalar b sets how much the soft assignment depends on attribute ``--attribute``:
logits z_ik = u_ik + b·(s_i − mean s)·[k = 0], u_ik ~ N(0, 1), s_i the attribute's value
rescaled to [0, 1], Q = softmax(z/τ) with FCMI's temperature τ = 0.1 (near-hard assignments,
as after FCMI's warm-up). T is the sensitive encoding the infomin methods use (``--encoding``,
default ``joint``: the intersectional cell). For each strength b the script draws
``--batches`` random batches of ``--batch-size`` rows (the training batch, 512), calls the
estimator as training does (``fit`` on the detached batch, then ``penalty``) and
differentiates the penalty with respect to b. It prints per estimator and strength:

* ``I(C;T) all``: the mutual information of the hard labels argmax Q with T over every row,
  and ``MNCE``: the dataset's MNCE on the attribute for those labels: the dependence the
  gradient should remove, on the scales the leaderboard uses;
* ``D̂``: the estimator's value, mean ± sd over batches (at b = 0: its floor under
  independence; the plug-in's is its finite-sample bias ≈ (K−1)(|T|−1)/(2B));
* ``dD̂/db > 0``: the share of batches whose gradient has the right sign (descending it
  lowers b); ``< 0``: the share with the wrong sign (the rest are exactly 0, e.g. dCor
  clamped at 0); ``SNR``: mean / sd of dD̂/db over batches. Shares near 50 / 50 and an SNR
  near 0 mean the fairness step is noise at that dependence.

Parametric critics (hgr, tc, club) persist across batches as in training; they take
``--burn-in`` unrecorded batches at each strength first. Here the distribution they track
stands still, so this is their best case: in training the encoder moves and can outrun them
(see "Neural critics" in ``methods/infomin.py``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tabulate import tabulate  # noqa: E402

from bench import metrics  # noqa: E402
from bench.scripting import add_dataset_arguments, fail, load_dataset  # noqa: E402
from methods._estimators import ESTIMATORS, encode_groups, make_estimator  # noqa: E402


def parse_estimator(spec: str) -> tuple[str, dict]:
    """``name`` or ``name:key=value,key=value`` (values parsed as int, float, else str)."""
    name, _, opts = spec.partition(":")
    if name not in ESTIMATORS:
        fail(f"unknown estimator {name!r}; accepted: {', '.join(ESTIMATORS)}")
    options = {}
    for item in filter(None, opts.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            fail(f"estimator option {item!r} in {spec!r} is not key=value")
        for cast in (int, float, str):
            try:
                options[key] = cast(value)
                break
            except ValueError:
                continue
    return name, options


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    add_dataset_arguments(ap, "adult", "a registered dataset with sensitive attributes")
    ap.add_argument("--estimators", nargs="+", default=["plugin", "pearson", "slice", "slice:n_slices=10"],
                    help="estimator specs: name or name:key=value,... (accepted names: " + ", ".join(ESTIMATORS) + ")")
    ap.add_argument("--strengths", nargs="+", type=float, default=[0.0, 0.25, 0.5, 1.0, 2.0],
                    help="dependence strengths b (0 = independence)")
    ap.add_argument("--attribute", type=int, default=0, help="index of the attribute the logits depend on")
    ap.add_argument("--encoding", default="joint", choices=("single", "joint", "concat"), help="encoding of T")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--batches", type=int, default=150, help="recorded batches per strength")
    ap.add_argument("--burn-in", type=int, default=50, help="unrecorded batches per strength for parametric critics")
    ap.add_argument("--tau", type=float, default=0.1, help="softmax temperature (FCMI: 0.1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return ap.parse_args(argv)


def soft_assignment(u: torch.Tensor, s: torch.Tensor, b: torch.Tensor, tau: float) -> torch.Tensor:
    """Q = softmax(z/τ), z = u + b·s·e_0 (see the module docstring)."""
    shift = torch.zeros_like(u)
    shift[:, 0] = 1.0
    return torch.softmax((u + b * s[:, None] * shift) / tau, dim=1)


def penalty_gradients(est, u, s, t, b_value: float, *, batch_size: int, batches: int, burn_in: int = 0,
                      tau: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """D̂ and dD̂/db on ``batches`` random batches at strength ``b_value``, the estimator called
    as training calls it (``fit`` on the detached batch, then ``penalty``). A trainable
    estimator first takes ``burn_in`` unrecorded batches. The batches depend on ``seed`` only,
    so estimators compared with one seed see the same batches."""
    gen = torch.Generator().manual_seed(seed)
    n = u.shape[0]
    n_burn = burn_in if est.trainable else 0
    values, grads = [], []
    for i in range(n_burn + batches):
        idx = torch.randperm(n, generator=gen)[:batch_size]
        b = torch.tensor(float(b_value), requires_grad=True)
        q = soft_assignment(u[idx], s[idx], b, tau)
        est.fit(q.detach(), t[idx])
        value = est.penalty(q, t[idx])
        if i < n_burn:
            continue
        (grad,) = torch.autograd.grad(value, b)
        values.append(float(value.detach()))
        grads.append(float(grad))
    return np.asarray(values), np.asarray(grads)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    specs = [(spec, *parse_estimator(spec)) for spec in args.estimators]
    if args.batch_size < 4 or args.batches < 2:
        fail("--batch-size must be >= 4 and --batches >= 2")
    data = load_dataset(args.dataset, args.data_dir)
    groups = torch.as_tensor(data.groups)
    n_values = [a.n_values for a in data.attributes]
    if not 0 <= args.attribute < len(n_values):
        fail(f"--attribute {args.attribute}, but {args.dataset} has attributes 0..{len(n_values) - 1}")
    K = data.n_clusters
    t_all, blocks = encode_groups(groups, n_values, args.encoding, args.attribute)
    t_all = t_all.float()
    # the dependence is read on T's cells (for ``concat``, on the joint cell)
    t_codes = t_all.argmax(1).numpy() if len(blocks) == 1 else data.clustering_input().joint_groups()[0]
    s_all = groups[:, args.attribute].float() / max(n_values[args.attribute] - 1, 1)
    s_all = s_all - s_all.mean()
    n, B = groups.shape[0], min(args.batch_size, groups.shape[0])

    def build(label, name, options):
        """A fresh estimator (critics restart at every strength); a bad option is bad input."""
        if name == "plugin":
            options = {"blocks": blocks, **options}
        try:
            return make_estimator(name, K, t_all.shape[1], seed=args.seed, **options)
        except (TypeError, ValueError) as exc:  # an option the estimator does not take, or a bad value
            fail(f"estimator {label!r}: {exc}")

    for spec in specs:  # every spec checked before any output
        build(*spec)
    print(f"{args.dataset}: n={n}, K={K}, attribute {data.attributes[args.attribute].name!r}, "
          f"T = {args.encoding} ({t_all.shape[1]} columns), batch {B}, {args.batches} batches per strength, tau {args.tau}")

    gen = torch.Generator().manual_seed(args.seed)
    u_all = torch.randn(n, K, generator=gen)
    rows = []
    for b_value in args.strengths:
        with torch.no_grad():
            hard = soft_assignment(u_all, s_all, torch.tensor(b_value), args.tau).argmax(1).numpy()
        mi_all = metrics.mutual_information(hard, t_codes)
        mnce_all = metrics.mnce(hard, data.groups[:, args.attribute], K, n_values[args.attribute])
        for label, name, options in specs:
            values, g = penalty_gradients(build(label, name, options), u_all, s_all, t_all, b_value, batch_size=B,
                                          batches=args.batches, burn_in=args.burn_in, tau=args.tau, seed=args.seed + 1)
            rows.append([
                b_value, f"{mi_all:.4f}", f"{100 * mnce_all:.1f}", label,
                f"{np.mean(values):.4f} ± {np.std(values):.4f}", f"{100 * np.mean(g > 0):.0f} %",
                f"{100 * np.mean(g < 0):.0f} %",
                f"{np.mean(g) / np.std(g):+.2f}" if np.std(g) > 0 else "n/a",
            ])
    print(tabulate(rows, headers=["b", "I(C;T) all", "MNCE", "estimator", "D̂ (mean ± sd)", "dD̂/db > 0", "< 0", "SNR"],
                   tablefmt="github"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
