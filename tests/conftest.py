import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

# The tests' networks and tensors are small: one intra-op thread is faster than two, and far steadier
# when the two cores are shared (a second OpenMP thread mostly spins on a busy core).
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/bench/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.bench)


@pytest.fixture(autouse=True)
def _deterministic_torch():
    """Every test starts from the same global RNG state and default dtype."""
    torch.manual_seed(0)
    torch.set_default_dtype(torch.float32)
    yield
