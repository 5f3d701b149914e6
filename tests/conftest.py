# difftem first: it sets OpenMP's passive waiting before torch loads (core/threads.py)
import difftem  # noqa: F401, I001
import os
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"
DATA = SHARED / "data"
STRUCTURES = DATA / "structures"


def pytest_configure(config):
    # under pytest-xdist each worker is one of the processes sharing the cores: one torch thread each
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    torch.set_num_threads(max(1, min(2, torch.get_num_threads()) // workers))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not DATA.exists():
        pytest.skip(f"shared data not found at {DATA}")
    return DATA


@pytest.fixture(scope="session")
def ubiquitin(shared_data):
    from difftem.specimen.structure import read_structure

    return read_structure(STRUCTURES / "1ubi_ubiquitin.pdb.gz")


@pytest.fixture
def one_thread():
    """Run a test on one torch thread. Tests of many small ops use it: with 2 threads on 2 busy cores each
    op waits on a descheduled worker (measured 80 ms instead of 0.2 ms per 8×8 call)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
