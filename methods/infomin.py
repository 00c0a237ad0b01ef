"""Infomin / sliced-MI variants of fair deep clustering: one FCMI backbone, only the fairness
estimator changes.

Design: ``shared/reference/ifc_infomin.md`` Part C (a proposal: Scalable Infomin Learning,
Chen et al., NeurIPS 2022, never clustered; its estimators are re-implemented in
:mod:`methods._estimators` from §B.3–B.4).
"""
from __future__ import annotations

import torch

from bench import Method, MethodOutput, ParameterError, register_method

from ._estimators import make_estimator
from .fcmi import FCMI, build_backbone, validate_backbone
from ._multi_attr import JointCoding, StepRecorder, train_multi_attribute

#: FCMI's backbone and schedule (its declared defaults and tiny test configuration), plus the
#: fairness target and the sensitive encoding; only the fairness term differs from FCMI.
BACKBONE = {**FCMI.parameters, "target": "assignment", "encoding": "joint", "attribute": 0}
TEST_BACKBONE = dict(FCMI.test_parameters)
CHOICES = {
    "target": ("assignment", "embedding"),
    "encoding": ("single", "joint", "concat"),
}


class InfominPenalty:
    """The fairness callable handed to FCMI's loop: per batch, max-step ``fit`` on detached
    tensors, then the differentiable ``penalty`` (§C.4). A plain object, not an ``nn.Module``:
    the critics are trained only by their own optimiser, never by the encoder's Adam."""

    def __init__(self, estimator, coding: JointCoding, target: str, encoding: str, attribute: int, recorder):
        self.estimator, self.coding, self.recorder = estimator, coding, recorder
        self.target, self.encoding, self.attribute = target, encoding, attribute

    def __call__(self, q, h, code, n_cells):
        a = q if self.target == "assignment" else h
        t, _ = self.coding.encode(code, self.encoding, self.attribute)
        self.recorder.start()
        self.estimator.fit(a.detach(), t)
        self.recorder.mark()
        value = self.estimator.penalty(a, t)
        self.recorder.stop()
        return value

    def state_dict(self) -> dict:
        """Estimator (critics, their optimisers, generator) and step records: a resumed run
        continues both (:mod:`bench.checkpoint`)."""
        return {"estimator": self.estimator.state_dict(), "recorder": self.recorder.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.estimator.load_state_dict(state["estimator"])
        self.recorder.load_state_dict(state["recorder"])


class InfominClustering(Method):
    """Base of the ``infomin-*`` methods (not registered itself).

    Backbone (identical for every variant, ifc_infomin.md §C.1, = FCMI, fcmi.md §1–§3): FCMI's
    autoencoder (conv net for C×28×28 images, MLP for everything else, flattened: e.g. 8×8
    digits and tabular features), L2-normalised embedding z (d = K), k-means centres refreshed
    every epoch, Q = softmax(z·μ/0.1), loss L_rec + α·(H(C|X) − H(C)) + β·D̂(A; T) with α = 0.04
    and the fairness term only after 20 reconstruction-only epochs; Adam 1e-3, batch 512, 300
    epochs; FCMI's loop (:func:`methods._fcmi_loop.train_fcmi_style`), run on intersectional
    codes (:mod:`methods._multi_attr`), one decoder per value of the primary attribute.

    Only D̂ changes between variants. Per batch (§C.4): ``fit`` on detached A (the max-step),
    then β·``penalty``(A, T) joins the loss (the min-step). ``target``: A = Q (``assignment``,
    the clustering analogue of demographic parity) or A = z (``embedding``, the infomin
    paper's setting). ``encoding`` of T: ``single`` (attribute ``attribute``), ``joint`` (the
    intersectional cell, the IFC-faithful choice and the only one that sees XOR-type
    dependence for every estimator) or ``concat``. With one attribute the three coincide.

    β convention: README style, β multiplies D̂ (larger = fairer); infomin's code puts β on
    the utility instead (§B.2). β = 0.2 (FCMI's LambdaFair) is a common default, not tuned:
    the estimators' scales differ (correlations in [0,1], TC in [0, log 2], CLUB and plug-in in
    nats), so sweep β per estimator. Correlation-type estimators (Pearson, dCor, slice, HGR)
    saturate: as Q becomes a near-deterministic function of T their gradient in Q vanishes
    (measured: slice |∇| ≈ 2e-4 at |ρ| = 1 against 0.1 at ρ = 0.6), so they cannot undo a
    clustering already aligned with T after warm-up; the plug-in MI's gradient grows instead.
    Measured on Adult (10 epochs of which 5 clustering, CPU, seeds 0–4; the leaderboard's
    sweep table): MNCE on sex at β = 0 / 0.05 / 0.2 / 0.5 is 80.8 / 95.8 / 99.0 / 97.5 for the
    plug-in but 80.8 / 84.2 / 95.6 / 80.6 ± 15.6 / 96.9 ± 5.0 (β = 1) for slice.

    Why slice's curve dips at β = 0.5: sliced MI on Adult's joint encoding is an unreliable
    fairness term, and the dip is not shown to be an effect of β. Per seed, the final I(C; sex ×
    race) is above 0.01 nats in 1 / 0 / 3 / 1 of 5 runs at β = 0.05 / 0.2 / 0.5 / 1 (0.047;
    none; 0.082, 0.028, 0.012; 0.0104). At β = 0.5 seed 0 ends more dependent than the same
    seed without the term (0.082 against 0.062). The plug-in leaves 1 of 15 runs above 0.01 at
    β ≥ 0.05. Three failures in five at β = 0.5, against 2 of 15 at the other weights pooled,
    is not significant at 5 seeds (Fisher's exact test, p = 0.07).
    ``benchmarks/estimator_gradients.py`` shows the noise, measured on Adult's 10 sex × race
    cells, batch 512, 150 batches per dependence level:

    * Under independence, slice's in-sample CCA reads 0.17 ± 0.05 (the plug-in 0.009).
    * At dependence levels of MNCE 92–97 on sex, just below where the plug-in's runs end on
      average (95.8–99.0 at β ≥ 0.05), slice's gradient has the right sign in 63–74 % of
      batches (mean/sd 0.1–0.5). The plug-in and Pearson are right in 90–100 % (mean/sd
      1.2–4.2).
    * With T = sex alone (``encoding=single``) the floor halves (0.08) and slice is right in
      77–89 % of batches in that band. At β = 0.5 all 5 seeds then end with I(C; sex) ≤ 0.003
      (MNCE on sex 93.7 ± 5.5).
    * Fewer slices (``n_slices=10``, joint) help less: right in 63–85 % of batches. At β = 0.5,
      1 seed of 5 ends above 0.01, and the clusters are lopsided (the smaller holds 0.5–22 %
      of the rows), which MNCE punishes even at I(C; sex) = 0.0002: MNCE 86.1 ± 8.5.
    * A 4× batch (2,048, joint) halves the floor (0.09) and is right in 77–98 % of batches in
      that band. Trained at β = 0.5 (``batch_size=2048``, same 10 epochs, hence a quarter of
      the steps; seeds 0–4), every seed ends with I(C; sex × race) ≤ 0.0013 (at batch 512:
      3 of 5 above 0.01), MNCE on sex 94.1 ± 7.4 (80.6 ± 15.6), ACC 66.9 ± 7.8 (65.6 ± 11.0).
      But none of the five ends as two sharp clusters of comparable size: seeds 1, 3, 4 end with collapsed soft
      assignments (H(C|X) 0.64–0.68 of log 2 = 0.69) and seeds 0 and 2 with sharp, lopsided
      clusters (4.7 % / 95.3 % of the rows, MNCE 85.9). A more reliable gradient lets the
      term reach its minimum; the degenerate minima are the backbone's to avoid.

    Some of slice's fair runs are also collapsed soft assignments (final H(C|X) ≥ 0.9 log 2:
    β = 0.05 seed 2, β = 0.2 seeds 3 and 4, β = 1 seed 1, ``encoding=single`` seed 0; the
    leaderboard lists them). So read a slice sweep per seed, beside its I(C;G) and collapse
    columns. Whether the full schedule (300 epochs) averages the noise out is owed to a GPU.

    Neural critics (HGR, TC, CLUB) can be fooled. Their critic persists across batches and
    takes ``inner_steps`` Adam steps per batch (3, 5, 5: the infomin Adult notebook's counts,
    kept as defaults). Measured on digits-reversed (target Q, joint encoding, β = 0.2, 50
    epochs, CPU, seeds 0–2; records in results/runs, "D̂ last" / "I(Q;G) last" columns of the
    leaderboard's cost table): with the default steps TC and CLUB end with D̂ ≈ 0 (TC
    0.007–0.035, CLUB −0.24 to 0.18) while the exact plug-in I(Q;G) of the same batches stays
    at 0.60–0.69 nats (log 2 = 0.69: clusters split by group) and MNCE is 0 on every seed: the
    encoder moves faster than the critic re-learns (on fixed data the TC critic needs ~175
    steps to reach its optimum). HGR ends partly fair (MNCE 55.5 / 68.5 / 0; seeds 3–4: 59.5 /
    89.9). TC and CLUB read MNCE 0 on seeds 3–4 too. With
    ``inner_steps=50`` (TC, CLUB) or 30 (HGR) the critics keep up: TC MNCE 85.9 / 11.0 / 97.9,
    I(Q;G) ≤ 0.04, ACC 38.8 ± 0.9 (default 39.3 ± 1.5); CLUB MNCE 99.1 / 0 / 98.7 with ACC 24.2
    ± 9.8 (its seed 1 collapsed: near-uniform soft assignments, flagged by the leaderboard);
    HGR MNCE 74.2 ± 12.5, I(Q;G) 0.03. Seeds 3 and 4 (added later, same settings) confirm TC
    (MNCE 94.5 and 97.4: fair on 4 of 5 seeds, ACC 36.8 ± 3.7) and HGR (91.1 and 82.1; 79.1 ±
    11.6 over five), but not CLUB: both collapsed like its seed 1 (final H(C|X) = log 10, MNCE
    0), so CLUB at 50 steps ends fair on 2 of 5 seeds and collapsed on 3. Raising β instead
    does not help (TC β = 1: MNCE 0 on all five seeds, I(C;G) 0.66–0.69 on seeds 0–2), nor does
    CLUB's categorical q(t|a) (MNCE 0 on all five; I 0.66–0.69 on seeds 0–2). The critic's steps cost 7–8× the fairness time (TC 38 → 273 ms per step on
    one core). On Adult (sex × race, K = 2, 10 epochs of which 5 clustering, seeds 0–4) CLUB
    and HGR were not fooled: I(Q;G) last 0.013 and 0.011, as the exact plug-in's 0.012, MNCE on
    sex 98.9 ± 0.8 and 98.7 ± 0.8 (plug-in 99.0 ± 1.2). TC was, mildly: D̂ 0.003 beside I(Q;G)
    0.021 ± 0.006 (0.018–0.025 on seeds 1–4) and MNCE 91.8 ± 6.7 (84.4–88.6 on seeds 2–4); a
    short clustering phase gives the encoder little time to outrun the critics. So read a
    neural estimator's row beside its I(Q;G) column, and sweep ``inner_steps`` with β; defaults
    stay the reference's.

    At the full defaults (300 epochs, β = 0.2; digits-reversed, CPU, seeds 0–4; leaderboard
    rows without brackets) the longer schedule rescues HGR but not TC or CLUB. HGR ends fair
    on every seed (MNCE 97.4 ± 1.8, I(Q;G) last 0.012; 50 epochs: 54.7 ± 33.3), as do Pearson
    (99.9), distance correlation (99.3) and the exact plug-in (99.7), all at ACC 33.7–38.1.
    TC ends with D̂ 0.005 beside I(Q;G) 0.61–0.69 and MNCE 0 on all five seeds; CLUB likewise
    (seeds 0–2: I(Q;G) 0.69, H(C|X) 0.66–0.70 of log 10; seeds 3–4: collapsed, H(C|X) = log 10
    and hard labels split by group). Their ACC (41.6 ± 1.7, 36.8 ± 2.8) is that of an unfair
    clustering.

    History rows add ``fair_fit_s`` (seconds per max-step, the infomin paper's axis) and
    ``fair_step_s`` (max-step + penalty forward; backward not included), measured with CUDA
    events on a GPU.
    """

    estimator = ""
    estimator_parameters: dict = {}
    paper = "Chen, Sun, Li, Weller, Scalable Infomin Learning, NeurIPS 2022 (estimators); FCMI backbone (CVPR 2023)"
    paper_name = ""
    fairness_weight = "beta"
    uses_gpu = True
    many_groups = True
    multi_attribute = True
    fairness_aware = True
    version = "1"

    def validate(self):
        p = self.params
        validate_backbone(self.name, p, CHOICES)
        for key in ("alpha", "beta"):
            if p[key] < 0:
                raise ParameterError(f"{self.name}: {key} must be >= 0")
        if p["attribute"] < 0:
            raise ParameterError(f"{self.name}: attribute must be a non-negative attribute index")
        for key in ("inner_steps", "n_slices", "hidden"):
            if key in p and p[key] < 1:
                raise ParameterError(f"{self.name}: {key} must be a positive integer")
        for key in ("inner_lr", "ridge"):
            if key in p and not p[key] > 0:
                raise ParameterError(f"{self.name}: {key} must be > 0")
        if p.get("reduce", "mean") not in ("mean", "max"):
            raise ParameterError(f"{self.name}: reduce must be mean or max")
        if p.get("variant", "gaussian") not in ("gaussian", "categorical"):
            raise ParameterError(f"{self.name}: variant must be gaussian or categorical")

    def fit(self, data, seed, device):
        p = self.params
        device = torch.device(device)
        if p["attribute"] >= data.n_attributes:
            raise ParameterError(f"{self.name}: attribute {p['attribute']} but the data have {data.n_attributes}")
        model = build_backbone(p, data, seed)
        coding = JointCoding(data.groups, [a.n_values for a in data.attributes], device)
        _, blocks = coding.encode(torch.zeros(1, dtype=torch.long, device=device), p["encoding"], p["attribute"])
        dim_a = data.n_clusters if p["target"] == "assignment" else model.embed_dim
        options = {k: p[k] for k in self.estimator_parameters}
        if self.estimator == "plugin":
            options["blocks"] = blocks
        estimator = make_estimator(self.estimator, dim_a, sum(blocks), device=device, seed=seed, **options)
        recorder = StepRecorder(device)
        penalty = InfominPenalty(estimator, coding, p["target"], p["encoding"], p["attribute"], recorder)
        labels, embedding, history = train_multi_attribute(
            model, data, penalty, p, seed=seed, device=device, alpha=p["alpha"], beta=p["beta"], recorder=recorder,
        )
        return MethodOutput(labels=labels, embedding=embedding, history=history)


@register_method
class InfominPearson(InfominClustering):
    """D̂ = mean_{a,b} |corr(A_a, T_b)| (infomin ``mi/corr.py``); linear dependence only.
    Shared backbone: :class:`InfominClustering`."""

    name = "infomin-pearson"
    description = "FCMI backbone + Pearson correlation penalty mean|corr(Q, T)| (infomin family)"
    estimator = "pearson"
    estimator_parameters = {"reduce": "mean"}
    parameters = {**BACKBONE, **estimator_parameters}
    test_parameters = TEST_BACKBONE


@register_method
class InfominDCor(InfominClustering):
    """D̂ = bias-corrected distance correlation (infomin ``mi/dc.py``); O(batch²) memory.
    Shared backbone: :class:`InfominClustering`."""

    name = "infomin-dcor"
    description = "FCMI backbone + distance-correlation penalty dCor(Q, T) (infomin family)"
    estimator = "dcor"
    parameters = dict(BACKBONE)
    test_parameters = TEST_BACKBONE


@register_method
class InfominSlice(InfominClustering):
    """D̂ = sliced MI (infomin ``mi/slice.py``): random slices, tanh-polynomial features,
    closed-form ridge CCA on the detached batch, slices redrawn every batch; S = 100 as in the
    infomin fairness notebooks. With many sparse joint cells its gradient is mostly noise at
    low dependence (Adult: right sign in 63–74 % of batches): see "Why slice's curve dips" in
    :class:`InfominClustering`; ``encoding=single`` or a larger batch make it more reliable."""

    name = "infomin-slice"
    description = "FCMI backbone + sliced mutual information penalty (Chen et al., NeurIPS 2022)"
    estimator = "slice"
    estimator_parameters = {"n_slices": 100, "ridge": 1e-3}
    parameters = {**BACKBONE, **estimator_parameters}
    test_parameters = {**TEST_BACKBONE, "n_slices": 10}


@register_method
class InfominHGR(InfominClustering):
    """D̂ = one-sided neural Rényi/HGR correlation, critic [d_A, 128, d_T], 3 inner steps per
    batch (infomin ``mi/renyi.py``; Adult notebook). Few inner steps let the encoder outrun the
    critic: see "Neural critics" in :class:`InfominClustering`."""

    name = "infomin-hgr"
    description = "FCMI backbone + neural Renyi/HGR maximal-correlation penalty (infomin family)"
    estimator = "hgr"
    estimator_parameters = {"inner_steps": 3, "inner_lr": 5e-4, "hidden": 128}
    parameters = {**BACKBONE, **estimator_parameters}
    test_parameters = {**TEST_BACKBONE, "inner_steps": 1}


@register_method
class InfominTC(InfominClustering):
    """D̂ = log 2 − loss of a joint-vs-shuffled critic (neural total correlation, infomin
    ``mi/tc.py``), 5 inner steps per batch (Adult notebook). At 5 steps the encoder fools the
    critic in clustering (D̂ ≈ 0, I(Q;G) ≈ 0.66, MNCE 0 on digits-reversed); ``inner_steps=50``
    restores fairness on 4 of 5 seeds: "Neural critics" in :class:`InfominClustering`."""

    name = "infomin-tc"
    description = "FCMI backbone + neural total-correlation penalty (infomin family)"
    estimator = "tc"
    estimator_parameters = {"inner_steps": 5, "inner_lr": 5e-4, "hidden": 100}
    parameters = {**BACKBONE, **estimator_parameters}
    test_parameters = {**TEST_BACKBONE, "inner_steps": 1}


@register_method
class InfominCLUB(InfominClustering):
    """D̂ = vCLUB upper bound with a Gaussian q(t|a) (infomin ``mi/club.py``), 5 inner steps per
    batch; ``variant=categorical`` uses a softmax q(t|a) for one-hot T. At 5 steps the bound
    is fooled in clustering (MNCE 0 on digits-reversed); ``inner_steps=50`` restores fairness on
    2 of 5 seeds at a cost in ACC and collapses the soft assignments on the other 3: "Neural
    critics" in :class:`InfominClustering`."""

    name = "infomin-club"
    description = "FCMI backbone + CLUB upper-bound MI penalty (infomin family)"
    estimator = "club"
    estimator_parameters = {"inner_steps": 5, "inner_lr": 5e-4, "hidden": 200, "variant": "gaussian"}
    parameters = {**BACKBONE, **estimator_parameters}
    test_parameters = {**TEST_BACKBONE, "inner_steps": 1}


@register_method
class InfominPlugin(InfominClustering):
    """D̂ = exact plug-in I(C; T) of the batch's soft cluster × cell table: FCMI's InfoFair with
    the chosen encoding (``concat`` sums over attributes), the reference of the family. Needs
    ``target=assignment``. With one attribute it is FCMI itself. Shared backbone:
    :class:`InfominClustering`."""

    name = "infomin-plugin"
    description = "FCMI backbone + exact plug-in I(C;T) on the soft table: the infomin reference"
    estimator = "plugin"
    parameters = dict(BACKBONE)
    test_parameters = TEST_BACKBONE

    def validate(self):
        super().validate()
        if self.params["target"] != "assignment":
            raise ParameterError("infomin-plugin: target must be assignment (the plug-in MI needs soft assignments)")
