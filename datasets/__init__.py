"""Dataset loaders of FairClusterBench.

Every module of this package is imported when the dataset registry is first used; each
registers its classes with ``@bench.register_dataset``. Modules import each other with
relative imports only, so the package also loads by file path when another top-level
``datasets`` package (Hugging Face's) was imported first (see ``bench/paths.py``).
"""
