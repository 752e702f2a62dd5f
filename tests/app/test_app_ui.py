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


def test_real_backbone_drops_the_toy_experiment(tmp_path):
    from i2v.app import app_argv

    assert app_argv(["backbone=sd15", "ckpt=a.safetensors"]) == ["~experiment", "backbone=sd15", "ckpt=a.safetensors"]
    assert app_argv(["backbone=toy", "server.port=9"]) == ["backbone=toy", "server.port=9"]
    assert app_argv(["experiment=toy_table3", "backbone=sd15"]) == ["experiment=toy_table3", "backbone=sd15"]
    cfg = app_cfg(tmp_path, *app_argv(["backbone=sd15", "ckpt=a.safetensors"]))
    assert cfg.backbone.name == "sd15" and cfg.ckpt == "a.safetensors"
    assert cfg.sampling.num_frames != 8            # the sampling defaults, not the toy experiment's values
