"""The Gradio page of ``python app.py``: inputs, one-video and side-by-side tabs, per-step progress.

Layout only: every button calls a :class:`~i2v.app.handlers.DemoApp` method and shows its message when it returns
``{"ok": False}``. All model events share one queue slot (``concurrency_id="model"``, limit 1): two requests at once
wait in line instead of running on one model in parallel.
"""
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")   # (before gradio is imported: it reads it on import)

import gradio as gr  # noqa: E402

from i2v.app.engine import ABLATIONS  # noqa: E402
from i2v.app.handlers import DemoApp, DemoInputError, parse_seed, parse_settings, strip_for_display  # noqa: E402

ABLATION_HELP = {"full": "I2V-Adapter + Content-Adapter (the paper's model)",
                 "no_i2v": "Content-Adapter only: no cross-frame attention to frame 1",
                 "no_content": "I2V-Adapter only: no image tokens in the cross-attention",
                 "none": "neither: the frozen text-to-video model with frame 1 kept clean"}
T0_HELP = "Frame Similarity Prior start time: denoising starts at t0·T from a noised, blurred copy of the input. " \
          "Lower t0: fewer steps, closer to the input, less motion."
P_HELP = "Share of latent elements taken from the blurred (not the exact) input in the prior. " \
         "Higher p: more freedom to move, less fidelity."
# system fonts: the default theme would fetch web fonts, which an offline machine cannot reach
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                          font_mono=["ui-monospace", "monospace"])
# small (toy) images are shown enlarged with sharp pixels instead of as 32-pixel thumbnails
CSS = """
#input-image img, #strip img, #sheet img { image-rendering: pixelated; }
#input-image img { width: 100%; height: 100%; object-fit: contain; }
"""
MODEL_QUEUE = dict(concurrency_limit=1, concurrency_id="model")


def shown_path(path: str) -> str:
    """A weights path as the page shows it: relative to the working directory when under it (the shipped toy
    adapter reads ``i2v/assets/toy/adapter.safetensors``), else as given."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def _checked(request) -> dict:
    """``request()``'s result, or the page's error dict when the form's values are refused (``DemoInputError``)."""
    try:
        return request()
    except DemoInputError as e:
        return {"ok": False, "error": str(e)}


def _message(text: str) -> str:
    return f"**⚠ {text}**"


def _progress(progress: gr.Progress):
    def cb(done: int, total: int) -> None:
        progress((done, total), desc="denoising", unit="steps")
    return cb


def build_demo(app: DemoApp) -> gr.Blocks:
    """The page for ``app`` (not launched)."""
    eng = app.engine
    d = eng.defaults()
    toy = eng.backbone == "toy"
    ckpt = shown_path(str(eng.cfg.get("ckpt"))) if eng.cfg.get("ckpt") else "none"
    title = f"I2V-Adapter: animate an image — backbone `{eng.backbone}`, adapter `{ckpt}`"
    choices = [(f"{n}: {ABLATION_HELP[n]}", n) for n in eng.ablations]

    with gr.Blocks(title="I2V-Adapter demo", analytics_enabled=False) as demo:
        gr.Markdown(f"### {title}\nFrame 1 of the video is your image, kept exactly; frames 2..F are denoised from "
                    f"the Frame Similarity Prior. Videos and their settings are saved in `{app.out_dir}`.")
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(label="input image (frame 1)", type="filepath", image_mode=None,
                                 sources=["upload", "clipboard"], elem_id="input-image", height=256)
                scene_btn = gr.Button("random toy scene", visible=toy, elem_id="toy-scene")
                prompt = gr.Textbox(label="prompt", lines=2, elem_id="prompt",
                                    placeholder="e.g. a red circle moving left on a blue background")
                negative = gr.Textbox(label="negative prompt", value=d.negative_prompt, elem_id="negative")
                steps = gr.Slider(1, 100, value=d.steps, step=1, label="steps", elem_id="steps",
                                  info="sampler steps over the full range; about steps·t0 are run")
                guidance = gr.Slider(1.0, 15.0, value=d.guidance_scale, step=0.5, label="guidance scale",
                                     info="classifier-free guidance (1 = off)")
                frames = gr.Slider(2, eng.frame_limit, value=d.num_frames, step=1, label="frames",
                                   info="frame 1 is the input image")
                with gr.Row():
                    seed = gr.Number(value=int(eng.cfg.get("seed", 42)), precision=0, label="seed", minimum=0)
                    random_seed = gr.Checkbox(value=False, label="random seed")
            with gr.Column(scale=2):
                with gr.Tab("One video"):
                    with gr.Row():
                        t0 = gr.Slider(0.01, 1.0, value=d.t0, step=0.01, label="t0", info=T0_HELP, elem_id="t0")
                        p = gr.Slider(0.0, 1.0, value=d.p, step=0.05, label="p", info=P_HELP, elem_id="p")
                    adapter = gr.Radio(choices, value=d.adapter, label="adapters (paper Table 3 ablations)")
                    go = gr.Button("generate", variant="primary", elem_id="generate")
                    status = gr.Markdown(elem_id="status")
                    with gr.Row():
                        video = gr.Video(label="video", elem_id="video", autoplay=True, loop=True, height=320)
                        settings_json = gr.JSON(label="settings (and the sample.py command that makes the same frames)",
                                                elem_id="settings")
                    strip = gr.Image(label="frames", elem_id="strip", interactive=False, format="png")
                    files = gr.File(label="download: mp4, settings json, lossless frame strip", file_count="multiple",
                                    elem_id="files")
                with gr.Tab("Side by side"):
                    gr.Markdown("The same image, prompt and seed with two settings (e.g. two values of p, or "
                                "`full` against `none`); or every ablation at once (a Table 3 row per adapter "
                                "setting, switched off in the one loaded model).")
                    with gr.Row():
                        col = {}
                        for side, default in (("A", d.adapter), ("B", eng.ablations[-1])):
                            with gr.Column():
                                gr.Markdown(f"**{side}**")
                                col[side] = (gr.Slider(0.01, 1.0, value=d.t0, step=0.01, label=f"t0 ({side})"),
                                             gr.Slider(0.0, 1.0, value=d.p, step=0.05, label=f"p ({side})"),
                                             gr.Dropdown(eng.ablations, value=default, label=f"adapters ({side})"))
                    with gr.Row():
                        cmp_btn = gr.Button("compare A and B", variant="primary", elem_id="compare")
                        t3_btn = gr.Button("every ablation (Table 3) with A's t0 and p", elem_id="table3")
                    cmp_status = gr.Markdown(elem_id="cmp-status")
                    with gr.Row():
                        video_a = gr.Video(label="A", autoplay=True, loop=True, height=256, elem_id="video-a")
                        video_b = gr.Video(label="B", autoplay=True, loop=True, height=256, elem_id="video-b")
                    sheet = gr.Image(label="frames, one row per setting", interactive=False, elem_id="sheet", format="png")
                    cmp_json = gr.JSON(label="settings")
                    cmp_files = gr.File(label="download", file_count="multiple")

        common = [image, prompt, negative, steps, guidance, frames, seed, random_seed]

        def on_generate(img, text, neg, n_steps, cfg_scale, num_frames, seed_v, rnd, t0_v, p_v, ad,
                        progress=gr.Progress()):
            res = _checked(lambda: app.generate(img, text, parse_settings(t0_v, p_v, n_steps, cfg_scale, num_frames,
                                                                         neg, ad),
                                                parse_seed(seed_v, rnd), _progress(progress)))
            if not res["ok"]:
                return _message(res["error"]), None, None, None, None
            note = f"done: {res['settings']['denoising_steps']} denoising steps in {res['settings']['seconds']} s, " \
                   f"seed {res['settings']['seed']}"
            return note, res["preview"], res["settings"], strip_for_display(res["frames"]), res["files"]

        go.click(on_generate, [*common, t0, p, adapter], [status, video, settings_json, strip, files],
                 **MODEL_QUEUE)

        def on_compare(img, text, neg, n_steps, cfg_scale, num_frames, seed_v, rnd, ta, pa, aa, tb, pb, ab,
                       progress=gr.Progress()):
            res = _checked(lambda: app.compare(img, text, parse_settings(ta, pa, n_steps, cfg_scale, num_frames, neg, aa),
                                               parse_settings(tb, pb, n_steps, cfg_scale, num_frames, neg, ab),
                                               parse_seed(seed_v, rnd), _progress(progress)))
            return _compare_outputs(res, ("A", "B"))

        def on_table3(img, text, neg, n_steps, cfg_scale, num_frames, seed_v, rnd, ta, pa, aa,
                      progress=gr.Progress()):
            res = _checked(lambda: app.table3(img, text, parse_settings(ta, pa, n_steps, cfg_scale, num_frames, neg, aa),
                                              parse_seed(seed_v, rnd), _progress(progress)))
            return _compare_outputs(res, (eng.ablations[0], eng.ablations[-1]))

        cmp_out = [cmp_status, video_a, video_b, sheet, cmp_json, cmp_files]
        cmp_btn.click(on_compare, [*common, *col["A"], *col["B"]], cmp_out, **MODEL_QUEUE)
        t3_btn.click(on_table3, [*common, *col["A"]], cmp_out, **MODEL_QUEUE)

        def on_scene():
            res = app.random_toy_scene()
            if not res["ok"]:
                return gr.update(), gr.update(), _message(res["error"])
            return res["image"], res["prompt"], f"toy scene {res['index']} (held-out seed {app.toy_scene_seed})"

        scene_btn.click(on_scene, None, [image, prompt, status])
    return demo


def _compare_outputs(res: dict, shown: tuple[str, str]):
    if not res["ok"]:
        return _message(res["error"]), None, None, None, None, None
    names = [k for k in res if isinstance(res[k], dict) and "settings" in res[k]]
    settings = {k: res[k]["settings"] for k in names}
    files = [f for k in names for f in res[k]["files"]] + [res["sheet"]]
    note = f"done: {', '.join(names)} with seed {res['seed']}; videos shown: {shown[0]} and {shown[1]}"
    return note, res[shown[0]]["preview"], res[shown[1]]["preview"], res["sheet"], settings, files


def launch(demo: gr.Blocks, host: str, port, allowed_paths: list[str], max_file_size=None,
           open_browser: bool = False) -> None:
    """Serve ``demo`` until interrupted (Ctrl-C or SIGTERM close the server cleanly)."""
    demo.queue(default_concurrency_limit=1, max_size=32)
    try:
        demo.launch(server_name=host, server_port=None if port in (None, "null") else int(port), show_error=True,
                    allowed_paths=allowed_paths, max_file_size=max_file_size, inbrowser=open_browser,
                    ssr_mode=False, theme=THEME, css=CSS, footer_links=[], quiet=False)
    finally:
        # Gradio's Ctrl-C path closes only the HTTP server; close() also stops the queue, its heartbeats and the
        # static-file worker pool, whose threads the interpreter would otherwise wait for on exit.
        demo.close(verbose=False)
