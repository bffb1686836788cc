"""Shared test settings: small CPU runs that share two cores with other work."""
import os

import pytest
import torch

# One intra-op thread per test process keeps the suite's CPU time predictable on 2 cores.
torch.set_num_threads(int(os.environ.get("DETRES_TEST_THREADS", "1")))


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped without one; run them with -m cuda)")
    config.addinivalue_line("markers", "faults: runs tools/train_det.py under torchrun and breaks it (kills, full "
                                       "disk, a stuck rank); run them alone with -m faults")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
