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


@pytest.fixture()
def png(tmp_path):
    """A random 32x32 RGB PNG (an input image for sample.py tests)."""
    import numpy as np
    from PIL import Image

    p = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(p)
    return p
