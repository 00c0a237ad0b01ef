"""Registries of methods and datasets.

Inside the project a class registers itself with ``@register_method`` /
``@register_dataset``; the built-in adapters live in the ``methods`` and ``datasets``
packages and every module there is imported on first use. Outside code registers without
editing the project through

* the entry-point groups ``fairclusterbench.methods`` and ``fairclusterbench.datasets``
  (each entry point names a module, or a class, to import), or
* ``--plugin path/to/file.py`` or ``--plugin some.module`` (:func:`load_plugin`).
"""
from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
from importlib.metadata import entry_points
from pathlib import Path

from .api import Dataset, Method
from .paths import import_project_package

METHOD_ENTRY_POINTS = "fairclusterbench.methods"
DATASET_ENTRY_POINTS = "fairclusterbench.datasets"


class UnknownName(KeyError):
    """A method or dataset name that is not registered."""

    def __str__(self):
        return self.args[0]


class Registry:
    def __init__(self, kind: str, base: type, package: str, group: str):
        self.kind, self.base, self.package, self.group = kind, base, package, group
        self._classes: dict[str, type] = {}
        self._loaded = False

    def register(self, cls):
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise TypeError(f"@register_{self.kind} expects a subclass of {self.base.__name__}, got {cls!r}")
        name = getattr(cls, "name", "")
        if not name or not isinstance(name, str) or name != name.strip() or " " in name:
            raise ValueError(f"{cls.__name__} must set a short class attribute `name` (no spaces)")
        previous = self._classes.get(name)
        if previous is not None and previous.__qualname__ != cls.__qualname__:
            raise ValueError(
                f"{self.kind} name {name!r} is already registered by {previous.__module__}.{previous.__qualname__}"
            )
        self._classes[name] = cls
        return cls

    def _load_builtins(self):
        if self._loaded:
            return
        self._loaded = True
        package = import_project_package(self.package)
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
            if not info.name.startswith("_"):
                importlib.import_module(f"{package.__name__}.{info.name}")
        for ep in entry_points(group=self.group):
            obj = ep.load()
            if isinstance(obj, type):
                self.register(obj)

    def names(self) -> list[str]:
        self._load_builtins()
        return sorted(self._classes)

    def get(self, name: str) -> type:
        self._load_builtins()
        try:
            return self._classes[name]
        except KeyError:
            raise UnknownName(f"unknown {self.kind} {name!r}; accepted: {', '.join(self.names())}") from None

    def items(self):
        self._load_builtins()
        return sorted(self._classes.items())


methods = Registry("method", Method, "methods", METHOD_ENTRY_POINTS)
datasets = Registry("dataset", Dataset, "datasets", DATASET_ENTRY_POINTS)


def register_method(cls):
    """Class decorator: make a :class:`~bench.api.Method` available under ``cls.name``."""
    return methods.register(cls)


def register_dataset(cls):
    """Class decorator: make a :class:`~bench.api.Dataset` available under ``cls.name``."""
    return datasets.register(cls)


class PluginError(ImportError):
    pass


def load_plugin(spec: str):
    """Import a plugin given as a ``.py`` file path or an importable module name.

    Its ``@register_method`` / ``@register_dataset`` decorators register what it defines.
    Loading the same plugin twice is a no-op."""
    path = Path(spec)
    if spec.endswith(".py") or path.is_file():
        path = path.resolve()
        if not path.is_file():
            raise PluginError(f"plugin file {spec!r} does not exist; give a .py file or an importable module name")
        module_name = "fairclusterbench_plugin_" + "".join(c if c.isalnum() else "_" for c in str(path))
        if module_name in sys.modules:
            return sys.modules[module_name]
        file_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(file_spec)
        sys.modules[module_name] = module
        try:
            file_spec.loader.exec_module(module)
        except Exception:
            del sys.modules[module_name]
            raise
        return module
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        raise PluginError(
            f"plugin {spec!r} is neither a .py file nor an importable module ({exc}); give a .py file or a module name"
        ) from None
