"""Thin wrappers that run FCMI's training loop (:mod:`methods._fcmi_loop`) with several
sensitive attributes and a pluggable fairness term (used by ``infomin-*`` and ``ifc``).

The loop takes one group index per sample. We hand it the *intersectional* code (mixed
radix over the attributes, attribute 0 most significant, every one of the ∏|G_s| cells has a
code even if empty), so that

* its batch-level I(C;G) log (``mi_cg``) and k-means diagnostic (``kmeans_mi``) are about the
  joint group;
* the fairness callable ``penalty(q, h, code, n_cells)`` recovers every attribute of a batch
  row from the code (:class:`JointCoding`);
* batches sorted by code are also sorted by attribute 0, so :class:`PrimaryDecoderView` can
  keep FCMI's one decoder per value of the primary attribute by summing consecutive counts
  (no device synchronisation).

:func:`train_multi_attribute` also trains on a resampled index set when asked (IFC's
sampling options) and then labels *every* sample with the trained model, and merges the
per-step records of the fairness term (seconds per step, loss components) into the loop's
per-epoch history.
"""
from __future__ import annotations

import time
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from ._estimators import encode_groups
from ._fcmi_loop import embed_all, train_fcmi_style

__all__ = ["JointCoding", "PrimaryDecoderView", "StepRecorder", "train_multi_attribute", "LOOP_KEYS"]

#: Method parameters passed through to :func:`methods._fcmi_loop.train_fcmi_style`.
LOOP_KEYS = (
    "epochs", "batch_size", "lr", "warmup_epochs", "temperature", "kmeans_iter", "kmeans_restarts",
    "kmeans_max_points_per_centroid", "kmeans_backend", "kmeans_seed", "final_centroids", "amp",
)


class JointCoding:
    """Intersectional cell of every sample: code = mixed-radix index of (g_1, …, g_S)."""

    def __init__(self, groups: np.ndarray, n_values: Sequence[int], device):
        groups = np.asarray(groups, dtype=np.int64).reshape(len(groups), -1)
        self.n_values = [int(v) for v in n_values]
        self.n_attributes = len(self.n_values)
        self.n_cells = int(np.prod(self.n_values))
        radix = np.cumprod([1] + self.n_values[::-1])[:-1][::-1]
        self.codes = (groups * radix).sum(1).astype(np.int64)
        cells = np.stack(np.unravel_index(np.arange(self.n_cells), self.n_values), 1)
        self.cells = torch.as_tensor(cells, dtype=torch.long, device=device)

    def attributes(self, code: torch.Tensor) -> torch.Tensor:
        """(B, S) attribute values of a batch of codes."""
        return self.cells[code]

    def encode(self, code: torch.Tensor, mode: str, attribute: int = 0):
        """One-hot sensitive encoding (single / joint / concat) of a batch of codes."""
        return encode_groups(self.cells[code], self.n_values, mode, attribute)


class PrimaryDecoderView(nn.Module):
    """The FCMI autoencoder seen through intersectional codes: decoders stay one per value of
    the primary attribute (FCMI's ``GroupWiseDecoder``); counts of consecutive cells sharing a
    primary value are summed on the host."""

    def __init__(self, model: nn.Module, n_values: Sequence[int]):
        super().__init__()
        self.model = model
        self.n_primary = int(n_values[0])
        self.cells_per_primary = int(np.prod(n_values[1:])) if len(n_values) > 1 else 1
        self.n_decoders = model.n_decoders

    def encode(self, x):
        return self.model.encode(x)

    def decode_sorted(self, z, counts):
        if len(counts) > 1:
            m = self.cells_per_primary
            counts = [sum(counts[i * m:(i + 1) * m]) for i in range(self.n_primary)]
        return self.model.decode_sorted(z, counts)


class StepRecorder:
    """Per-call seconds and loss components of a fairness term, without host syncs in the
    step: CUDA events on a GPU, ``perf_counter`` on the CPU.

    ``start()`` before the max-step, ``mark()`` between max- and min-step (optional: terms
    without a max-step skip it), ``stop(**values)`` after the penalty's forward pass.
    :meth:`epoch_rows` returns one dict per clustering epoch: ``fair_fit_s`` (seconds per
    max-step: the infomin paper's axis; when marked), ``fair_step_s`` (max-step + penalty
    forward) and the mean of each recorded value. On a GPU, events of finished steps are
    turned into seconds (non-blocking ``query``) at the next ``start``, so few stay alive."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"
        self.seconds, self.pending, self.values, self.keys, self._open = [], [], [], None, None

    def state_dict(self) -> dict:
        """The steps recorded so far (pending CUDA events resolved first), for a resumed run."""
        if self.cuda:
            torch.cuda.synchronize()
            self._drain(block=True)
        return {"seconds": list(self.seconds), "values": list(self.values), "keys": self.keys}

    def load_state_dict(self, state: dict) -> None:
        self.seconds, self.keys = list(state["seconds"]), state["keys"]
        device = "cuda" if self.cuda else "cpu"
        self.values, self.pending = [v.to(device) for v in state["values"]], []

    def _now(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _resolve(self, marks):
        if self.cuda:
            return [a.elapsed_time(b) / 1000.0 for a, b in zip(marks[:1] * (len(marks) - 1), marks[1:])]
        return [b - marks[0] for b in marks[1:]]

    def _drain(self, block: bool = False):
        while self.pending and (block or self.pending[0][-1].query()):
            self.seconds.append(self._resolve(self.pending.pop(0)))

    def start(self):
        if self.cuda:
            self._drain()
        self._open = [self._now()]

    def mark(self):
        self._open.append(self._now())

    def stop(self, **values):
        self._open.append(self._now())
        if self.cuda:
            self.pending.append(self._open)
        else:
            self.seconds.append(self._resolve(self._open))
        if self.keys is None:
            self.keys = list(values)
        if self.keys:
            self.values.append(torch.stack([values[k].detach().float() for k in self.keys]))

    def epoch_rows(self, n_epochs: int) -> list[dict]:
        if self.cuda:
            torch.cuda.synchronize()
            self._drain(block=True)
        if not self.seconds or n_epochs < 1:
            return []
        per = len(self.seconds) // n_epochs
        if per * n_epochs != len(self.seconds):  # unexpected call count: one aggregate row
            n_epochs, per = 1, len(self.seconds)
        seconds = np.asarray(self.seconds)  # (steps, 1 or 2): [fit, step] or [step]
        stacked = torch.stack(self.values).cpu() if self.values else None
        rows = []
        for e in range(n_epochs):
            chunk = seconds[e * per:(e + 1) * per].mean(0)
            row = {"fair_step_s": float(chunk[-1])}
            if len(chunk) == 2:
                row["fair_fit_s"] = float(chunk[0])
            if stacked is not None:
                means = stacked[e * per:(e + 1) * per].mean(0).tolist()
                row.update({k: float(v) for k, v in zip(self.keys, means)})
            rows.append(row)
        return rows


def train_multi_attribute(
    model: nn.Module,
    data,
    penalty,
    params: dict,
    *,
    seed: int,
    device,
    alpha: float,
    beta: float,
    reconstruction_weight: float = 1.0,
    recorder: Optional[StepRecorder] = None,
    train_index: Optional[np.ndarray] = None,
):
    """Run FCMI's loop on intersectional codes with ``penalty`` as the fairness term.

    ``model``: a :class:`methods._nets.GroupAutoencoder` with one decoder per primary value
    (or one). ``train_index``: rows to train on (resampled set, repetitions allowed); all rows
    are labelled afterwards by argmax_k h·μ_k with the loop's final centroids. Returns
    (labels, embedding, history) for all samples."""
    device = torch.device(device)
    coding_np = JointCoding(data.groups, [a.n_values for a in data.attributes], "cpu")
    codes = coding_np.codes
    X = data.X
    if train_index is not None:
        X, codes = X[train_index], codes[train_index]
    view = PrimaryDecoderView(model, [a.n_values for a in data.attributes])
    loop_args = {k: params[k] for k in LOOP_KEYS}
    result = train_fcmi_style(
        view, X, codes, data.n_clusters, seed=seed, device=device, n_groups=coding_np.n_cells,
        alpha=alpha, beta=beta, reconstruction_weight=reconstruction_weight, fairness_penalty=penalty, **loop_args,
    )
    labels, embedding = result.labels, result.embedding
    if train_index is not None:
        Xd = torch.as_tensor(data.X, dtype=torch.float32, device=device)
        h = embed_all(view, Xd, 16384 if device.type == "cuda" else 2048, params.get("amp", False))
        labels = (h @ result.centroids.T).argmax(1).cpu().numpy().astype(np.int64)
        embedding = h.cpu().numpy()
    history = [dict(row) for row in result.history]
    if recorder is not None:
        clustering = [row for row in history if row["epoch"] >= params["warmup_epochs"]]
        for row, extra in zip(clustering, recorder.epoch_rows(len(clustering))):
            row.update(extra)
    return labels, embedding.astype(np.float32), history

