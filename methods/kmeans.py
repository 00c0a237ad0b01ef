"""k-means on the input features: the fairness-unaware reference."""
from __future__ import annotations

from bench import Method, MethodOutput, register_method
from bench.kmeans import kmeans


@register_method
class KMeansBaseline(Method):
    """Lloyd's k-means on the flattened input features (faiss; its GPU index when faiss-gpu
    is installed and the device is a GPU, the torch implementation on a GPU otherwise).
    Ignores the sensitive attributes: it shows what fairness costs and buys."""

    name = "kmeans"
    description = "k-means on the input features (faiss / torch), fairness-unaware reference"
    paper = "Lloyd (1982); faiss (Johnson et al., 2019)"
    parameters = {"n_iter": 300, "n_init": 10, "max_points_per_centroid": 1000, "backend": "auto"}
    test_parameters = {"n_iter": 20, "n_init": 2}
    uses_gpu = True
    fairness_aware = False
    many_groups = True

    def validate(self):
        if self.params["backend"] not in ("auto", "faiss", "torch"):
            from bench import ParameterError

            raise ParameterError("kmeans: backend must be one of auto, faiss, torch")

    def fit(self, data, seed, device):
        import torch

        X = torch.as_tensor(data.flat_features()).to(device)
        _, labels = kmeans(
            X, data.n_clusters, n_iter=self.params["n_iter"], n_init=self.params["n_init"], seed=seed,
            max_points_per_centroid=self.params["max_points_per_centroid"], backend=self.params["backend"],
        )
        return MethodOutput(labels=labels.cpu().numpy())
