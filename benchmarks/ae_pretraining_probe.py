"""Does AE/DEC's autoencoder pretraining die? The first Adam steps, watched. A script, not a test.

    python benchmarks/ae_pretraining_probe.py --dataset mnist-usps --seeds 0 1 4 --outputs tanh linear

AE and DEC (``methods/ae.py``, ``methods/dec.py``) pretrain FCMI's autoencoder on a raw (not
unit-norm) code. With FCMI's Tanh on the reconstruction layer (``output=tanh``, their version
1) the code can grow in Adam's first steps until every pre-Tanh value saturates and no
gradient reaches the encoder: the autoencoder is dead, DEC then puts every sample in one
cluster. This script runs the real pretraining loop (``methods.ae.pretrain_autoencoder``, the
same batches and initialisation as a run of that seed) for its first ``--steps`` Adam steps
and prints, at a few of them, per output layer and seed:

* ``code norm`` / ``code spread``: mean L2 norm of the batch's codes, and the mean over code
  dimensions of their std over the batch (:func:`methods.ae.code_scale`);
* ``|dL/dcode|``: the norm of the reconstruction loss's gradient at the code, i.e. what
  reaches the encoder (exactly 0 once the Tanh is saturated);
* ``saturated``: the share of the reconstruction layer's pre-activations with |x| > 3 (Tanh
  only; its slope there is below 0.01).

Measured on MNIST-USPS (CPU): with ``tanh`` seeds 1, 4, 5, 6 and 8 grow the code to norm
230-525 by step 39 (seeds 1 and 4 then die for good), with ``linear`` none does. The labels are
never read.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from tabulate import tabulate  # noqa: E402

from bench import registry  # noqa: E402
from bench.scripting import add_dataset_arguments, fail, load_dataset  # noqa: E402
from bench.seeding import seed_everything  # noqa: E402
from methods._nets import OUTPUTS  # noqa: E402
from methods.ae import build_single_decoder_ae, pretrain_autoencoder  # noqa: E402

#: A step is shown when it is one of these or the last one.
SHOWN = (0, 1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128)


class _Enough(Exception):
    """Raised from a hook to leave the training loop after the requested steps."""


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    add_dataset_arguments(ap, "digits-reversed", "a registered dataset (default: the embedded one)")
    ap.add_argument("--method", default="dec", choices=("ae", "dec"), help="whose pretraining parameters to use")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--outputs", nargs="+", default=list(OUTPUTS), help="any of: " + ", ".join(OUTPUTS))
    ap.add_argument("--steps", type=int, default=40, help="Adam steps to watch (default 40)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return ap.parse_args(argv)


def probe(inp, params: dict, seed: int, steps: int) -> list[dict]:
    """The first ``steps`` training steps of the pretraining of ``seed`` on the prepared input
    ``inp``, one row per step (see the module docstring). CPU."""
    seed_everything(seed)
    model = build_single_decoder_ae(params, inp, seed)
    rows, current = [], {}

    def on_code(module, args, code):
        if module.training:
            current.clear()
            z = code.detach()
            current.update(code_norm=float(z.norm(dim=1).mean()), code_spread=float(z.std(0).mean()))
            code.register_hook(on_code_grad)

    def on_reconstruction(module, args, out):
        if module.training:
            pre = args[0].detach()
            current["saturated"] = float((pre.abs() > 3).float().mean()) if params["output"] == "tanh" else None

    def on_code_grad(grad):
        rows.append({"step": len(rows), **current, "grad_code": float(grad.norm())})
        if len(rows) >= steps:
            raise _Enough

    model.encoder.register_forward_hook(on_code)
    model.group_decoders[0][-1].register_forward_hook(on_reconstruction)
    try:
        pretrain_autoencoder(model, params, inp, seed, torch.device("cpu"), 1 + steps // max(1, inp.n_samples // params["batch_size"]))
    except _Enough:
        pass
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    bad = [o for o in args.outputs if o not in OUTPUTS]
    if bad:
        fail(f"unknown output {bad[0]!r}; accepted: {', '.join(OUTPUTS)}")
    if args.steps < 1:
        fail(f"--steps must be a positive integer, got {args.steps}")
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset, args.data_dir)
    table = []
    for output in args.outputs:
        method = registry.methods.get(args.method)(output=output)
        inp = method.prepare_input(data.clustering_input())
        for seed in args.seeds:
            for r in probe(inp, method.params, seed, args.steps):
                if r["step"] in SHOWN or r["step"] == args.steps - 1:
                    sat = "–" if r["saturated"] is None else f"{r['saturated']:.2f}"
                    table.append([output, seed, r["step"], f"{r['code_norm']:.2f}", f"{r['code_spread']:.3f}",
                                  f"{r['grad_code']:.2e}", sat])
    print(f"{args.method} pretraining on {args.dataset}: the first {args.steps} Adam steps")
    print(tabulate(table, headers=["output", "seed", "step", "code norm", "code spread", "|dL/dcode|", "saturated"],
                   tablefmt="github", disable_numparse=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
