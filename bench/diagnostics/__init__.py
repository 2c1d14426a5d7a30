"""Tools that found where time went, kept for the next such question: the served UNet's timing adapter
(timed_unet_model.py, a Triton model that bench.gpu_serving --unet-timings installs) and the call
profiler both it and the in-process side use."""
