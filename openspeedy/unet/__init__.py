"""The UNet at serving time: runtime variants, memory layout, FP8 linears and the onnxruntime runtime."""
