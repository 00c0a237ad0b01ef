"""The random sensitive attribute IFC adds to its image datasets (``ifc_infomin.md`` §A.5).

IFC's code gives MNIST-USPS and ReverseMNIST a second attribute besides the source: a
"synthetic random binary, 60 % / 40 %", drawn with torch seed 42 as a random permutation per
dataset object, so that in ReverseMNIST an image and its colour-reversed twin (two dataset
objects of equal size) get the same value. RECONSTRUCTED from that description: we draw it
with NumPy (``default_rng(42)``), hence the same shares and the same twin structure, not the
same individuals. It is independent of the images, so no representation can encode it; only
the balance of the clusters over it can change (§A.5's observation)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from bench import Attribute

#: The attribute's declaration: value 0 for the 60 % part, 1 for the 40 % part.
SYNTHETIC_ATTRIBUTE = Attribute("synthetic", 2, ("60%", "40%"))


def synthetic_attribute(component_sizes: Sequence[int], seed: int = 42, share: float = 0.6) -> np.ndarray:
    """Value 0 for exactly ``round(share·n)`` samples of each component (a dataset object of
    ``n`` samples, in order), chosen by a permutation from a fresh ``default_rng(seed)``; 1
    for the rest. Components of equal size get the same values, sample by sample."""
    parts = []
    for n in component_sizes:
        values = np.ones(int(n), dtype=np.int64)
        values[np.random.default_rng(seed).permutation(int(n))[: int(round(share * n))]] = 0
        parts.append(values)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
