"""The page's wiring without a browser: the model events share one queue slot (two requests wait in line), the
server binds to loopback unless told otherwise, and app.py's model arguments become the sample.py command."""
from i2v.app import sample_overrides
from toy_app import app_cfg


def test_model_events_share_one_queue_slot(demo_app):
    from i2v.app.ui import build_demo

    demo = build_demo(demo_app)
    model = [f for f in demo.fns.values() if f.name in ("on_generate", "on_compare", "on_table3")]
    assert len(model) == 3
    assert {(f.concurrency_limit, f.concurrency_id) for f in model} == {(1, "model")}
    assert all(f.queue for f in model)


def test_loopback_by_default(tmp_path):
    cfg = app_cfg(tmp_path)
    assert cfg.server.host == "127.0.0.1" and cfg.backbone.name == "toy" and cfg.adapter.name == "full"


def test_sample_overrides():
    assert sample_overrides(["server.port=9", "sampling.steps=4", "ckpt=a.safetensors", "out=/x"], "toy") == \
        ["experiment=toy", "ckpt=a.safetensors"]
    assert sample_overrides(["~experiment", "backbone=sd15", "hydra.run.dir=/r", "adapter=none"], None) == \
        ["backbone=sd15"]
