"""Export: build a servable model repository from a diffusers checkpoint (or a tiny random one)."""
