"""FairClusterBench core: the method/dataset API, metrics, runner and report.

Adapters depend on this package, never the other way round.
"""
from .api import (
    Attribute,
    ClusteringInput,
    Dataset,
    LabelledData,
    Method,
    MethodOutput,
    NotApplicable,
    ParameterError,
)
from .registry import load_plugin, register_dataset, register_method
from .seeding import resolve_device, seed_everything

__version__ = "0.1.0"

__all__ = [
    "Attribute",
    "ClusteringInput",
    "Dataset",
    "LabelledData",
    "Method",
    "MethodOutput",
    "NotApplicable",
    "ParameterError",
    "load_plugin",
    "register_dataset",
    "register_method",
    "resolve_device",
    "seed_everything",
]
