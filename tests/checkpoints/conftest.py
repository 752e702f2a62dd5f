"""Fixtures for the checkpoint tests; the layouts, writers and references live in ckpt_layouts.py."""
from __future__ import annotations

import pytest
from ckpt_layouts import make_unet


@pytest.fixture(scope="session")
def sd15_unet():
    return make_unet("sd15")


@pytest.fixture(scope="session")
def sdxl_unet():
    return make_unet("sdxl")


@pytest.fixture(scope="session")
def ckpt_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("ckpts")


@pytest.fixture(scope="session")
def sd15_folder(sd15_unet, ckpt_dir):
    """A pipeline-style folder: <root>/unet/{config.json, diffusion_pytorch_model.safetensors}."""
    root = ckpt_dir / "sd15_pipe"
    sd15_unet.save_pretrained(root / "unet")
    return root


@pytest.fixture(scope="session")
def sdxl_folder(sdxl_unet, ckpt_dir):
    root = ckpt_dir / "sdxl_unet"
    sdxl_unet.save_pretrained(root)
    return root
