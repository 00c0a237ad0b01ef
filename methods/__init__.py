"""Method adapters of FairClusterBench.

Every module of this package is imported when the method registry is first used; each
registers its classes with ``@bench.register_method``. Modules import each other with
relative imports only.
"""
