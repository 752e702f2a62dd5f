import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Tests run as `pytest -n 2` on 2 cores: one intra-op thread per worker. Oversubscribed OpenMP threads on a busy
# machine slow tiny-model code down by 10-40x (measured: a toy video took 1.9 s with 1 thread, 84 s with 2).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
