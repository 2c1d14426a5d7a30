"""OpenSpeedy's benchmarks, each a module run from the repository root (``python -m bench.NAME --help``).

GPU, full-size architecture with random weights (one process, one GPU):
- ``bench.end_to_end``: whole videos, diffusers (eager, compiled, tuned as its speed guide says) against
  OpenSpeedy's UNet variants and opt-in approximations, with speed-ups, compile times and output differences;
- ``bench.unet_calls``: one UNet call per variant (ms, TFLOP/s, error), feature reuse's shallow path,
  the temporal attention kernel against SDPA;
- ``bench.decode_and_encode``: chunked VAE decoding and the image-only work a cache hit skips;
- ``bench.startup``: seconds to a served UNet that has compiled, with Inductor's cache empty and kept;
- ``bench.preview_cost``: the same video without live previews and with one every N steps;
- ``bench.gpu_serving`` (through ``bench/gpu_serving.sh``): served against in-process time;
  ``MODULE=bench.multi_gpu_serving bash bench/gpu_serving.sh OUT``: per-GPU placement.

CPU, tiny model: ``bench.cache_bench`` (the encoding caches), ``bench.step_overhead`` (a served step's
cost), ``bench.perf_analyzer.run --tiny`` (perf_analyzer sweeps).

``bench.common`` holds what they share; ``bench.diagnostics`` the timing adapter and call profiler;
``bench.results_table`` renders bench/results/README.md and ``bench.speed_page`` docs/speed.md from the
result files (``make results``). Each benchmark writes into its card's folder, ``bench/results/<card>/``
(``cpu`` for the tiny-model ones, their default).
"""
