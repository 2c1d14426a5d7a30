"""The Gradio page: controls, progress, video and downloads, laid out over ``openspeedy.ui.session``."""

import argparse
import os
import random
from pathlib import Path

from openspeedy.client import example_image
from openspeedy.ui.session import (
    CACHE_NOTE,
    DEFAULT_KEEP_FILES_S,
    DEFAULT_PREVIEW_INTERVAL,
    ERROR_TARGETS,
    SERVER,
    Generations,
    Update,
)

DEFAULT_HOST, DEFAULT_PORT, DEFAULT_SERVER = "127.0.0.1", 7860, "127.0.0.1:8001"
# Controls in the order the generate action takes them (also the API endpoint's parameter order).
OPTION_NAMES = ("negative_prompt", "num_frames", "height", "width", "num_inference_steps", "guidance_scale",
                "target_fps", "seed", "feature_reuse_interval", "guidance_interval_start", "guidance_interval_end",
                "preview_interval")
# Numeric controls that start at the server's default (the model's default_* config parameters).
DEFAULTED = ("num_frames", "height", "width", "num_inference_steps", "guidance_scale", "target_fps",
             "feature_reuse_interval", "guidance_interval_start", "guidance_interval_end")
FRACTIONS = ("guidance_scale", "guidance_interval_start", "guidance_interval_end")
SERVER_POLL_S = 2.0  # how often a page that has no server defaults yet asks for them
# The server refuses images over 32 MiB (max_image_bytes); the page refuses them before they are stored.
DEFAULT_MAX_UPLOAD_MB = 32
APPROXIMATIONS_NOTE = ("**Approximations**: off at a reuse interval of 1 and guidance from 0 to 1 (then "
                       "the video is the exact one). Their quality on trained weights has not been measured.")

CSS = """
.field-error, .field-error * { color: #b91c1c !important; font-weight: 600; }
#progress progress { width: 100%; height: 14px; }
#cache-note, #cache-note * { color: #166534 !important; font-weight: 600; }
#preview img { image-rendering: pixelated; width: 100%; object-fit: contain; }
"""


def progress_html(progress: tuple[int, int] | None) -> str:
    if not progress or not progress[1]:
        return '<div id="progress-bar"></div>'
    done, total = progress
    return (f'<div id="progress-bar"><progress value="{done}" max="{total}"></progress>'
            f'<span class="progress-text">step {done} / {total}</span></div>')


def random_seed() -> int:
    return random.randrange(2**31)


def server_values(parameters: dict[str, str]) -> dict[str, float]:
    """The server's defaults of the numeric controls, from the model's config parameters."""
    values = {}
    for name in DEFAULTED:
        text = parameters.get(f"default_{name}")
        if text:
            values[name] = float(text) if name in FRACTIONS else int(text)
    return values


def left_to_server(values: dict, typed: frozenset) -> dict:
    """The values to send while the page has no server defaults: what the user typed; the other numeric
    fields hold Gradio's 0 for an empty Number, which is not a value anyone chose, so they go empty."""
    return {name: value if name in typed or name not in DEFAULTED else None for name, value in values.items()}


def build(generations: Generations):
    import gradio as gr

    defaults = server_values(generations.server_defaults())

    # Gradio's own copies (uploads, files it served) go after the same time as the videos, checked as often.
    keep_s = int(generations.keep_files_s)
    with gr.Blocks(title="OpenSpeedy", delete_cache=(max(60, keep_s // 4), keep_s)) as page:
        gr.Markdown("# OpenSpeedy: image to video\nOne image, many prompts: the image's encodings are cached.")
        errors: dict[str, gr.Markdown] = {}

        def error_slot(name: str) -> None:
            errors[name] = gr.Markdown("", visible=False, elem_id=f"error-{name}", elem_classes=["field-error"])

        gr.Textbox(generations.server_url, label="Triton server (gRPC)", interactive=False, elem_id="server")
        error_slot(SERVER)
        waiting_note = gr.Markdown("The server does not answer yet: the fields get its defaults when it does.",
                                   visible=False, elem_id="waiting-for-server")
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="filepath", label="Image", sources=["upload", "clipboard"], elem_id="image")
                error_slot("image")
                prompt = gr.Textbox(label="Prompt", lines=2, elem_id="prompt")
                error_slot("prompt")
                negative = gr.Textbox(label="Negative prompt", elem_id="negative_prompt")
                error_slot("negative_prompt")
                numbers = {}
                for row in (("num_frames", "height", "width"), ("num_inference_steps", "guidance_scale", "target_fps")):
                    with gr.Row():
                        for name in row:
                            with gr.Column(min_width=120):
                                label = name.replace("num_inference_steps", "steps").replace("_", " ").capitalize()
                                numbers[name] = gr.Number(
                                    defaults.get(name), label=label, elem_id=name,
                                    precision=None if name == "guidance_scale" else 0,
                                )
                                error_slot(name)
                with gr.Row():
                    with gr.Column(scale=4):
                        numbers["seed"] = gr.Number(None, label="Seed", info="same seed and inputs, same video",
                                                    precision=0, elem_id="seed")
                        error_slot("seed")
                    dice = gr.Button("Random seed", elem_id="random-seed", scale=1)
                gr.Markdown(APPROXIMATIONS_NOTE, elem_id="approximations")
                with gr.Row():
                    with gr.Column(min_width=120):
                        numbers["feature_reuse_interval"] = gr.Number(
                            defaults.get("feature_reuse_interval"), label="Feature reuse interval", precision=0,
                            info="every N steps; 1: off", elem_id="feature_reuse_interval")
                        error_slot("feature_reuse_interval")
                    for name, label, info in (("guidance_interval_start", "Guidance from", "fraction of the steps"),
                                              ("guidance_interval_end", "Guidance until", "0 to 1: every step")):
                        with gr.Column(min_width=120):
                            numbers[name] = gr.Number(defaults.get(name), label=label, info=info, elem_id=name)
                error_slot("guidance_interval")  # under both of its fields
                numbers["preview_interval"] = gr.Number(
                    DEFAULT_PREVIEW_INTERVAL, label="Preview every", precision=0, elem_id="preview_interval",
                    info="steps: a rough look at the video while it is made; 0: none")
                error_slot("preview_interval")
                with gr.Row():
                    generate = gr.Button("Generate", variant="primary", elem_id="generate")
                    cancel = gr.Button("Cancel", variant="stop", elem_id="cancel")
            with gr.Column():
                progress = gr.HTML(progress_html(None), elem_id="progress")
                status = gr.Markdown("", elem_id="status")
                cache_note = gr.Markdown("", elem_id="cache-note")
                preview = gr.Image(label="Preview (the video so far, roughly)", elem_id="preview", interactive=False,
                                   visible=False, type="pil", format="png")
                video = gr.Video(label="Video", elem_id="video", interactive=False)
                with gr.Row():
                    mp4 = gr.DownloadButton("Download MP4", visible=False, elem_id="download-mp4")
                    gif = gr.DownloadButton("Download GIF", visible=False, elem_id="download-gif")
        for name in ERROR_TARGETS:
            if name not in errors:  # inputs without a control of their own report beside the server field
                errors[name] = errors[SERVER]
        options = [negative] + [numbers[name] for name in OPTION_NAMES[1:]]
        # The API endpoint answers with the MP4 alone: the live preview is the page's.
        api_options = [control for name, control in zip(OPTION_NAMES, options) if name != "preview_interval"]
        slots = list(dict.fromkeys(errors.values()))

        def show(update: Update) -> dict:
            changes = {progress: progress_html(update.progress) if update.progress else gr.skip(),
                       status: update.status}
            if update.preview is not None:
                changes[preview] = gr.update(value=update.preview, visible=True)
            messages: dict = {}
            for name, message in update.errors.items():
                messages.setdefault(errors.get(name, errors[SERVER]), []).append(message)
            for slot in slots:
                text = " ".join(messages.get(slot, []))
                changes[slot] = gr.update(value=text, visible=bool(text))
            if update.done:  # the video replaces the preview
                changes[preview] = gr.update(value=None, visible=False)
                changes[cache_note] = CACHE_NOTE if update.cache_hit else ""
                changes[video] = str(update.mp4) if update.mp4 else None
                for button, path in ((mp4, update.mp4), (gif, update.gif)):
                    changes[button] = gr.update(value=str(path) if path else None, visible=bool(path))
            return changes

        # Gradio fills gr.Request in by its position, so it comes before the options (in OPTION_NAMES' order).
        def on_generate(image_path, prompt_text, typed, has_defaults, request: gr.Request, *option_values):
            yield {cache_note: "", video: None, mp4: gr.update(visible=False), gif: gr.update(visible=False),
                   preview: gr.update(value=None, visible=False)}
            values = dict(zip(OPTION_NAMES, option_values, strict=True))
            if not has_defaults:
                values = left_to_server(values, typed)
            for update in generations.run(request.session_hash, image_path, prompt_text, **values):
                yield show(update)

        def on_cancel(request: gr.Request):
            generations.cancel(request.session_hash)

        def api_generate(image, prompt, negative_prompt=None, num_frames=None, height=None, width=None,
                         num_inference_steps=None, guidance_scale=None, target_fps=None, seed=None,
                         feature_reuse_interval=None, guidance_interval_start=None, guidance_interval_end=None):
            """Generates a video from an image and a prompt; unset options take the server's defaults.
            Returns the H.264 MP4."""
            try:
                return str(generations.generate_file(
                    image, prompt, negative_prompt=negative_prompt, num_frames=num_frames, height=height,
                    width=width, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                    target_fps=target_fps, seed=seed, feature_reuse_interval=feature_reuse_interval,
                    guidance_interval_start=guidance_interval_start, guidance_interval_end=guidance_interval_end))
            except Exception as error:  # noqa: BLE001 - the API caller gets the message
                raise gr.Error(str(error)) from None

        # Per tab: the numeric fields the user typed in, and whether the others hold the server's defaults.
        typed, has_defaults = gr.State(frozenset()), gr.State(False)
        waiting = gr.Timer(SERVER_POLL_S, active=False)
        for name in DEFAULTED:
            numbers[name].input(lambda names, name=name: names | {name}, typed, typed, queue=False,
                                api_visibility="private")

        outputs = [progress, status, cache_note, preview, video, mp4, gif, *slots]
        # Every tab runs its own generation at once: the server's queue, not the page, limits them.
        generate.click(on_generate, [image, prompt, typed, has_defaults, *options], outputs, api_visibility="private",
                       concurrency_limit=None)
        cancel.click(on_cancel, None, None, queue=False, api_visibility="private")
        dice.click(random_seed, None, numbers["seed"], queue=False, api_visibility="private")
        # The named API endpoint for programs (gradio_client): the same generation, returning the MP4.
        api_trigger = gr.Button(visible=False)
        api_trigger.click(api_generate, [image, prompt, *api_options], gr.File(visible=False), api_name="generate",
                          concurrency_limit=None)
        defaulted = [numbers[name] for name in DEFAULTED]

        def fill_defaults(names: frozenset):
            # The server's defaults as they are now (it may have started after the page), where the user has
            # not typed; without them, ask again every SERVER_POLL_S.
            values = server_values(generations.server_defaults())
            fields = [gr.skip() if name in names else values.get(name, gr.skip()) for name in DEFAULTED]
            return fields + [bool(values), gr.Timer(active=not values), gr.update(visible=not values)]

        filled = defaulted + [has_defaults, waiting, waiting_note]
        page.load(lambda: fill_defaults(frozenset()) + [random_seed()], None, filled + [numbers["seed"]],
                  api_visibility="private")
        waiting.tick(fill_defaults, typed, filled, api_visibility="private")
        gr.Examples([[str(example_image()), "a lighthouse by the sea, waves rolling in"]], [image, prompt])
    return page


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=DEFAULT_HOST, help="address the web page listens on")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--server", default=DEFAULT_SERVER, help="the Triton server's gRPC address")
    parser.add_argument("--timeout", type=float, help="seconds a generation may take (default: no limit)")
    parser.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                        help=f"largest image upload the page accepts (default {DEFAULT_MAX_UPLOAD_MB} MB)")
    parser.add_argument("--keep-files-s", type=float, default=DEFAULT_KEEP_FILES_S,
                        help="seconds uploads and generated videos stay on disk before they are deleted "
                             f"(default {DEFAULT_KEEP_FILES_S:g})")


def launch_options(args: argparse.Namespace) -> dict:
    """What bounds the page's disk use and uploads, as Gradio's launch() takes it."""
    return {"max_file_size": f"{args.max_upload_mb:g}mb"}


def run(args: argparse.Namespace) -> int:
    # The page must work offline and send nothing anywhere: no usage analytics.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    generations = Generations(args.server, timeout_s=args.timeout, keep_files_s=args.keep_files_s)
    page = build(generations)
    print(f"OpenSpeedy UI on http://{args.host}:{args.port} (Triton gRPC {args.server})", flush=True)
    # System fonts: the default theme's web fonts would be fetched from the internet.
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    page.queue().launch(server_name=args.host, server_port=args.port, css=CSS, theme=theme, show_error=True,
                        allowed_paths=[str(Path(generations.output_dir))], **launch_options(args))
    return 0
