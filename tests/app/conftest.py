"""One toy DemoEngine for the app tests of a worker (loading it takes seconds; it is read-only between requests)."""
import pytest
from toy_app import app_cfg


@pytest.fixture(scope="session")
def toy_engine(tmp_path_factory):
    from i2v.app.engine import DemoEngine

    return DemoEngine.load(app_cfg(tmp_path_factory.mktemp("app_out")))


@pytest.fixture()
def demo_app(toy_engine, tmp_path):
    from i2v.app.handlers import DemoApp

    return DemoApp(toy_engine, tmp_path / "app", sample_overrides=["experiment=toy"], max_image_pixels=512 * 512)
