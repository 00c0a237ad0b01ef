import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch/faiss load: see run_benchmark.py

import pytest  # noqa: E402
import torch  # noqa: E402

# Keep tests reproducible and light on CI's 2 cores.
torch.set_num_threads(min(2, os.cpu_count() or 1))

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


@pytest.fixture(scope="session")
def shared_data():
    """The offline copies of the real datasets (read only), or skip where absent."""
    path = os.path.abspath(os.environ.get("FAIRCLUSTERBENCH_SHARED_DATA", SHARED_DATA))
    if not os.path.isdir(path):
        pytest.skip(f"offline data folder {path} not found")
    return path
