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


@pytest.fixture(scope="module")
def one_thread():
    """One thread for torch and faiss over a module of small, sequential work (tiny networks,
    estimators, solvers): faster than two on CI's shared cores and immune to a busy machine.
    Restored afterwards. Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    try:
        import faiss
    except ImportError:
        faiss = None
    before = torch.get_num_threads()
    faiss_before = faiss.omp_get_max_threads() if faiss else None
    torch.set_num_threads(1)
    if faiss:
        faiss.omp_set_num_threads(1)
    yield
    torch.set_num_threads(before)
    if faiss:
        faiss.omp_set_num_threads(faiss_before)
