import os
from pathlib import Path

import pytest

# A fashion-mnist-lt small enough for a training run in about a second on 2 cores.
TINY_DATA = {"head": 40, "imbalance": 10, "val_per_class": 4, "test_per_class": 6}
TINY_SETS = [f"{k}={v}" for k, v in TINY_DATA.items()]


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty registry home for the test (also what the CLI sees through LTBENCH_HOME)."""
    h = tmp_path / "runs"
    monkeypatch.setenv("LTBENCH_HOME", str(h))
    return h


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
