"""The two small classes everything plugs into: :class:`Method` and :class:`Dataset`.

A *dataset* loads a :class:`LabelledData` (features, true labels, sensitive attributes).
A *method* only ever sees the :class:`ClusteringInput` made from it by
:meth:`LabelledData.clustering_input`: the true labels are not part of that object, so they
cannot reach training (protocol: transductive, labels are for evaluation only).

Both follow benchopt's "one class per thing, declared parameters" style and scikit-learn's
habit of validating parameters in ``__init__``.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import numpy as np

__all__ = [
    "Attribute",
    "ClusteringInput",
    "LabelledData",
    "MethodOutput",
    "Method",
    "Dataset",
    "ParameterError",
    "NotApplicable",
]


class ParameterError(ValueError):
    """A hyperparameter name or value that a method or dataset does not accept."""


class NotApplicable(Exception):
    """Raised by :meth:`Method.check_applicable` when a method cannot handle a dataset
    (e.g. a two-group method on HAR's 30 subjects). The runner shows "n/a", not a failure."""


@dataclass(frozen=True)
class Attribute:
    """One sensitive attribute: its name and the number of values it takes (0..n_values-1)."""

    name: str
    n_values: int
    value_names: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class ClusteringInput:
    """What a method receives. No true labels here, by construction.

    Attributes
    ----------
    X : float32 array, shape (n, ...) -- images keep their (C, H, W) shape.
    groups : int64 array, shape (n, n_attributes), values in 0..attribute.n_values-1.
    attributes : the sensitive attributes, one per column of ``groups``.
    n_clusters : number of clusters to find.
    name : the dataset's name (for logging only).
    """

    X: np.ndarray
    groups: np.ndarray
    attributes: tuple[Attribute, ...]
    n_clusters: int
    name: str = ""

    @property
    def n_samples(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_attributes(self) -> int:
        return len(self.attributes)

    @property
    def group(self) -> np.ndarray:
        """The primary (first) sensitive attribute, shape (n,)."""
        return self.groups[:, 0]

    @property
    def n_groups(self) -> int:
        """Number of values of the primary attribute."""
        return self.attributes[0].n_values

    def joint_groups(self) -> tuple[np.ndarray, int]:
        """The intersectional group of every sample (cross product of all attributes),
        re-indexed to the cells that occur, and the number of such cells."""
        return joint_group_codes(self.groups, [a.n_values for a in self.attributes])

    def primary_only(self) -> "ClusteringInput":
        """The same input restricted to the primary attribute (for single-attribute methods)."""
        return dataclasses.replace(self, groups=self.groups[:, :1], attributes=self.attributes[:1])

    def flat_features(self) -> np.ndarray:
        """X reshaped to (n, d)."""
        return self.X.reshape(self.n_samples, -1)


def joint_group_codes(groups: np.ndarray, n_values: list[int] | None = None) -> tuple[np.ndarray, int]:
    """Map rows of a (n, S) attribute matrix to one intersectional code per sample.

    The codes are the ranks of the occurring cells in lexicographic order of the attribute
    values, so they are deterministic and dense (0..n_cells-1)."""
    groups = np.asarray(groups)
    if groups.ndim == 1:
        groups = groups[:, None]
    _, codes = np.unique(groups, axis=0, return_inverse=True)
    codes = np.asarray(codes).reshape(-1).astype(np.int64)
    return codes, int(codes.max()) + 1 if codes.size else 0


@dataclass(frozen=True, eq=False)
class LabelledData:
    """A loaded dataset: a :class:`ClusteringInput` plus the true labels for evaluation."""

    X: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    attributes: tuple[Attribute, ...]
    n_clusters: int
    name: str = ""
    info: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        X, y, g = self.X, np.asarray(self.y), np.asarray(self.groups)
        if g.ndim == 1:
            g = g[:, None]
            object.__setattr__(self, "groups", g)
        n = X.shape[0]
        if y.shape != (n,):
            raise ValueError(f"dataset {self.name!r}: y has shape {y.shape}, expected ({n},)")
        if g.shape != (n, len(self.attributes)):
            raise ValueError(
                f"dataset {self.name!r}: groups has shape {g.shape}, expected ({n}, {len(self.attributes)})"
            )
        for j, a in enumerate(self.attributes):
            if g[:, j].min() < 0 or g[:, j].max() >= a.n_values:
                raise ValueError(f"dataset {self.name!r}: attribute {a.name!r} has values outside 0..{a.n_values - 1}")
        object.__setattr__(self, "y", y.astype(np.int64, copy=False))
        object.__setattr__(self, "groups", g.astype(np.int64, copy=False))

    @property
    def n_samples(self) -> int:
        return int(self.X.shape[0])

    def clustering_input(self) -> ClusteringInput:
        """The label-free view handed to methods."""
        return ClusteringInput(
            X=self.X, groups=self.groups, attributes=self.attributes, n_clusters=self.n_clusters, name=self.name
        )


@dataclass
class MethodOutput:
    """What :meth:`Method.fit` returns: a hard label for every sample (0..n_clusters-1),
    optionally an embedding (n, d) and a per-epoch history (list of dicts of floats, e.g.
    losses; metrics computed with labels never belong here).

    ``stages`` optionally names the labels of every sample at intermediate points of the
    training (e.g. FCMI's warm-up clustering, DFC's k-means start): the runner stores them
    beside the final labels and scores them like the final ones (the record's ``stages``), for
    diagnosis only. They never choose what is reported: the final labels are the result.

    ``reused_seconds`` is the time an earlier fit in the same process spent on work this fit
    took from a cache instead of redoing (work that depends on the data only, such as SpFC's
    k-NN graph). The runner adds it to the cell's ``train_seconds``, so that a cell's time is
    what it costs alone whatever ran before it in the worker, and stores it in the record."""

    labels: np.ndarray
    embedding: np.ndarray | None = None
    history: list[dict] = field(default_factory=list)
    stages: dict[str, np.ndarray] = field(default_factory=dict)
    reused_seconds: float = 0.0


def _jsonable(value):
    return json.loads(json.dumps(value))


class _Declared:
    """Shared machinery of :class:`Method` and :class:`Dataset`: declared parameters with
    defaults, validated at construction."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    parameters: ClassVar[dict[str, Any]] = {}

    def __init__(self, **params):
        unknown = sorted(set(params) - set(self.parameters))
        if unknown:
            accepted = ", ".join(sorted(self.parameters)) or "none"
            raise ParameterError(
                f"{self.kind} {self.name!r} has no parameter {', '.join(map(repr, unknown))}; accepted: {accepted}"
            )
        merged = {**self.parameters, **params}
        for key, default in self.parameters.items():
            merged[key] = _coerce(self.kind, self.name, key, merged[key], default)
        self.params = _jsonable(merged)
        self.validate()

    kind: ClassVar[str] = "object"

    def validate(self) -> None:
        """Override to check parameter values; raise :class:`ParameterError` with a one-line message."""

    def spec(self) -> dict:
        """Identity of this configured object: name + all parameters (defaults filled in)."""
        return {"name": self.name, "params": dict(sorted(self.params.items()))}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(self.params.items()))
        return f"{type(self).__name__}({args})"


def _coerce(kind, name, key, value, default):
    """Coerce CLI strings and ints to the type of the declared default."""
    if default is None or value is None:
        return value
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                low = value.lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if isinstance(default, int) and not isinstance(value, bool):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, str):
            return str(value)
        if isinstance(default, (list, tuple)) and isinstance(value, str):
            return [type(default[0])(v) if default else v for v in value.split(",")]
    except (TypeError, ValueError):
        raise ParameterError(
            f"{kind} {name!r}: parameter {key!r}={value!r} is not a valid {type(default).__name__}"
        ) from None
    return value


class Method(_Declared):
    """Base class of a clustering method adapter.

    Subclass, set the class attributes, implement :meth:`fit`, and register with
    ``@bench.register_method``::

        @register_method
        class MyMethod(Method):
            name = "my-method"
            description = "one line shown by --list"
            parameters = {"epochs": 100, "lr": 1e-3}   # defaults
            test_parameters = {"epochs": 2}            # tiny CPU configuration for tests
            uses_gpu = True                            # runs on the GPU when there is one
            many_groups = True                         # handles more than two groups
            multi_attribute = False                    # uses several attributes at once

            def fit(self, data, seed, device):
                ...
                return MethodOutput(labels=labels)

    ``fit`` must be deterministic for a given seed on the CPU. The runner seeds Python,
    NumPy and torch before calling it; methods should still derive their own generators
    from ``seed``.
    """

    kind: ClassVar[str] = "method"
    #: Tiny configuration (overrides of ``parameters``) used by contract tests and the quick suite.
    test_parameters: ClassVar[dict[str, Any]] = {}
    #: The method uses a GPU when one is available (the Ray executor asks for one).
    uses_gpu: ClassVar[bool] = False
    #: False only for methods that cannot run on a CPU at all.
    cpu_capable: ClassVar[bool] = True
    #: Handles a primary attribute with more than two values.
    many_groups: ClassVar[bool] = True
    #: Uses several sensitive attributes jointly; otherwise it sees the primary one only.
    multi_attribute: ClassVar[bool] = False
    #: Uses the sensitive attributes at all (False for fairness-unaware references).
    fairness_aware: ClassVar[bool] = True
    #: Bump when the implementation changes results: it is part of the cell key.
    version: ClassVar[str] = "1"
    #: The paper the method implements (shown by --list and in records).
    paper: ClassVar[str] = ""
    #: Name of this method in ``paper_results.csv`` (e.g. "FCMI"), if the papers report it.
    paper_name: ClassVar[str] = ""
    #: The hyperparameter that weighs the fairness term (e.g. "beta"), so that
    #: ``--sweep fairness=0,0.1,...`` can sweep methods whose parameter names differ.
    fairness_weight: ClassVar[str] = ""

    @classmethod
    def test_config(cls) -> "Method":
        return cls(**cls.test_parameters)

    def check_applicable(self, data: ClusteringInput) -> None:
        """Raise :class:`NotApplicable` if this method cannot handle ``data``."""
        if self.fairness_aware and not self.many_groups and data.n_groups > 2:
            raise NotApplicable(
                f"{self.name} handles two groups only; {data.name} has {data.n_groups} groups in "
                f"attribute {data.attributes[0].name!r}"
            )

    def prepare_input(self, data: ClusteringInput) -> ClusteringInput:
        """The view of the data this method trains on (primary attribute only unless
        ``multi_attribute``)."""
        return data if self.multi_attribute else data.primary_only()

    def fit(self, data: ClusteringInput, seed: int, device) -> MethodOutput:  # pragma: no cover
        raise NotImplementedError


class Dataset(_Declared):
    """Base class of a dataset loader.

    Subclass, set the class attributes, implement :meth:`load`, and register with
    ``@bench.register_dataset``. ``load`` receives the data folder (``--data-dir``, else
    ``$FAIRCLUSTERBENCH_DATA``, else a per-user cache) and returns a :class:`LabelledData`.
    """

    kind: ClassVar[str] = "dataset"
    #: Short summary of what ``load`` returns, e.g. "67,291 images 1x28x28; 10 clusters; source (2)".
    summary: ClassVar[str] = ""
    #: The paper whose construction it follows.
    paper: ClassVar[str] = ""
    #: Name of this dataset in ``paper_results.csv`` (e.g. "mnist-usps").
    paper_name: ClassVar[str] = ""
    #: Needs no download (embedded in a dependency or generated).
    embedded: ClassVar[bool] = False
    #: Evaluation protocol; the suite never mixes protocols in one table.
    protocol: ClassVar[str] = "transductive"
    #: Included in ``--datasets all`` (False for generated control datasets).
    listed_in_all: ClassVar[bool] = True
    version: ClassVar[str] = "1"

    def load(self, data_dir) -> LabelledData:  # pragma: no cover
        raise NotImplementedError
