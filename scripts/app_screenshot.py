"""The README's docs/app.png: ``python app.py`` in a subprocess, one toy generation driven by a real headless
Chromium (the same steps as tests/app/test_app_browser.py), then a screenshot of the page.

    PYTHONPATH=. python scripts/app_screenshot.py --out docs/app.png
"""
import argparse
import sys
import tempfile
from pathlib import Path

from PIL import Image

from i2v.app.browser import app_server, chromium, find_browser, generate_in_page
from i2v.utils.io import to_uint8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="docs/app.png")
    ap.add_argument("--scene", type=int, default=3, help="held-out toy scene (evaluation seed)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--height", type=int, default=1500, help="window height in pixels")
    args = ap.parse_args()
    browser, driver, missing = find_browser()
    if missing:
        sys.exit(missing)
    from omegaconf import OmegaConf

    from i2v.toy.evaluate import held_out_scenes, scene_options
    toy = OmegaConf.load(Path(__file__).resolve().parents[1] / "configs" / "backbone" / "toy.yaml")
    data = held_out_scenes(args.scene + 1, 8, 32, scene_options(toy))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        Image.fromarray(to_uint8(data.first_frame(args.scene)[None])[0]).save(tmp / "scene.png")
        with app_server([f"hydra.run.dir={tmp / 'run'}"], tmp / "server.log") as url, \
                chromium(browser, driver, height=args.height) as drv:
            res = generate_in_page(drv, url, tmp / "scene.png", data.scene(args.scene).caption, steps=args.steps)
            drv.save_screenshot(args.out)
    print(f"{args.out}: {res['status']}")


if __name__ == "__main__":
    main()
