"""One toy DemoEngine for the app tests of a worker (loading it takes seconds; it is read-only between requests)."""
import pytest
from hydra import compose, initialize_config_dir

from i2v.config import CONFIGS


def app_cfg(tmp_path, *over):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="app", overrides=[f"out={tmp_path}", "sampling.steps=4", *over])


@pytest.fixture(scope="session")
def toy_engine(tmp_path_factory):
    from i2v.app.engine import DemoEngine

    return DemoEngine.load(app_cfg(tmp_path_factory.mktemp("app_out")))


@pytest.fixture()
def demo_app(toy_engine, tmp_path):
    from i2v.app.handlers import DemoApp

    return DemoApp(toy_engine, tmp_path / "app", sample_overrides=["experiment=toy"], max_image_pixels=512 * 512)
