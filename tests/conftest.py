from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"
DATA = SHARED / "data"
STRUCTURES = DATA / "structures"


def pytest_configure(config):
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not DATA.exists():
        pytest.skip(f"shared data not found at {DATA}")
    return DATA


@pytest.fixture(scope="session")
def ubiquitin(shared_data):
    from difftem.structure import read_structure

    return read_structure(STRUCTURES / "1ubi_ubiquitin.pdb.gz")
