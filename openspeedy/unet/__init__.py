"""The UNet at serving time: its options (options.py), the order it applies them in (recipe.py), the PyTorch
runtime (runtime.py), a module a technique (named as its option), feature reuse and the onnxruntime runtime."""
