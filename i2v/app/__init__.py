"""The web demo behind ``python app.py`` (Gradio): ``engine.py`` loads the model once and samples through the same
function as ``sample.py``; ``handlers.py`` checks inputs and writes each request's files; ``ui.py`` is the page."""
from __future__ import annotations

import faulthandler
import signal
from pathlib import Path

from omegaconf import DictConfig

# keys of app.yaml (and per-request settings) that are not part of the sample.py command reproducing a video
_NOT_FOR_SAMPLE = ("server.", "out=", "max_image_pixels=", "toy_scene_seed=", "hydra.", "sampling.", "adapter=",
                   "seed=", "image=", "prompt=", "task=")


def app_argv(argv: list[str]) -> list[str]:
    """``python app.py backbone=sd15 ...``: a real backbone on the command line replaces the default toy experiment
    (its sampling values and its toy adapter ``ckpt``), as if ``'~experiment'`` had been typed; an explicit
    ``experiment=`` / ``~experiment`` is kept as given."""
    if any(a.lstrip("+~").startswith("experiment") for a in argv):
        return list(argv)
    real = any(a.startswith("backbone=") and a.split("=", 1)[1] != "toy" for a in argv)
    return ["~experiment", *argv] if real else list(argv)


def sample_overrides(overrides: list[str], experiment: str | None) -> list[str]:
    """The app's command-line overrides that select its model, as ``sample.py`` arguments (the experiment first)."""
    keep = [o for o in overrides if not o.lstrip("+~").startswith(_NOT_FOR_SAMPLE) and o != "~experiment"]
    has_experiment = any(o.lstrip("+~").startswith("experiment=") for o in keep)   # (sample.py has none by default)
    return keep if has_experiment or not experiment else [f"experiment={experiment}", *keep]


def serve(cfg: DictConfig, overrides: list[str] | None = None, experiment: str | None = None) -> None:
    """``python app.py``: load the model, then serve the page until Ctrl-C/SIGTERM."""
    from i2v.app.engine import DemoEngine
    from i2v.app.handlers import DemoApp
    from i2v.app.ui import build_demo, launch

    engine = DemoEngine.load(cfg)
    out_dir = Path(str(cfg.out))
    app = DemoApp(engine, out_dir, sample_overrides(overrides or [], experiment),
                  max_image_pixels=int(cfg.max_image_pixels), toy_scene_seed=int(cfg.toy_scene_seed))
    print(f"model loaded ({engine.backbone}, adapters: {', '.join(engine.ablations)}); videos go to {out_dir}/",
          flush=True)
    signal.signal(signal.SIGTERM, _interrupt)   # SIGTERM closes the server like Ctrl-C (no orphan, exit status 0)
    srv = cfg.server
    launch(build_demo(app), host=str(srv.host), port=srv.port, allowed_paths=[str(out_dir.resolve())],
           max_file_size=srv.get("max_file_size"), open_browser=bool(srv.get("open_browser", False)))
    # Closed. Should something still hold the process open, say what (every thread's stack, to the log) after 20 s.
    faulthandler.dump_traceback_later(20, exit=False)


def _interrupt(signum, frame):
    raise KeyboardInterrupt
