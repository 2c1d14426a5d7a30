"""The UNet at serving time, a module a technique: runtime variants, memory layout, the temporal
attention kernel, whole-forward CUDA graphs, feature reuse, FP8 linears and the onnxruntime runtime."""
