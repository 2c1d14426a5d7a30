"""``openspeedy ui``: a Gradio web app, a client of the streaming model (``i2vgen_xl_stream``).

``session`` holds what the page does (requests, progress, cancel, errors by control) without Gradio;
``app`` lays it out in Gradio and serves it."""
