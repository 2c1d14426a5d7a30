"""What export is asked to build: the instances, precision, runtimes and their options of every model."""

from __future__ import annotations

from dataclasses import dataclass, field

from openspeedy.cache import CacheSettings
from openspeedy.decoding import DEFAULT_MEMORY_BUDGET_BYTES, DEFAULT_TILE_ABOVE_PIXELS
from openspeedy.export.tensorrt_engine import UNetProfile
from openspeedy.model_config import QueuePolicy
from openspeedy.request import RequestSettings
from openspeedy.unet.options import EAGER, UNetOptions


@dataclass(frozen=True)
class ExportOptions:
    device: str = "cpu"  # cpu or gpu: the instance kind of every model
    gpus: tuple[int, ...] = ()  # with gpu: the devices to place instances on (empty = all)
    dtype: str = "float32"  # what the components compute in (float16/bfloat16 on GPUs)
    # Requests the orchestrator works on at once. Each instance is a process with its own local cache
    # (Redis shares one across instances and replicas); on one GPU a second instance interleaves UNet
    # calls, adding latency without throughput.
    entry_instances: int = 1
    component_instances: int = 1
    decode_memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES
    decode_tile_above_pixels: int = DEFAULT_TILE_ABOVE_PIXELS
    settings: RequestSettings = field(default_factory=RequestSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    queue: QueuePolicy = field(default_factory=QueuePolicy)
    warmup_shapes: str = ""  # "FRAMESxHEIGHTxWIDTH,...": compiled and measured at load, not at the first request
    compile_cache_dir: str = ""  # torch runtime: Inductor's and Triton's caches here (a volume), for fast restarts
    unet_options: UNetOptions = EAGER  # torch runtime: its techniques (``--unet-options``, openspeedy/unet/options.py)
    vae_decoder_compile_mode: str = ""  # "" (eager) or "default": torch.compile of the decoder network
    vae_encoder_compile_mode: str = ""  # "" (eager) or "default": torch.compile of the encoder network
    unet_runtime: str = "torch"  # torch | onnxruntime | tensorrt (openspeedy/export/unet_repository.py)
    unet_profile: UNetProfile = field(default_factory=UNetProfile)  # shapes the TensorRT engine serves
    # With several GPUs: one copy of each component per GPU in ``gpus`` (contracts.gpu_model_name),
    # and the orchestrators on each GPU call their own GPU's copies, so no tensor crosses GPUs.
    per_gpu_components: bool = False
    # The two guidance halves of each UNet call as two concurrent requests, one per `unet` instance: two
    # CPU instances, or one per GPU of ``gpus`` (docs/multi_gpu.md). One GPU named: the batched call.
    cfg_parallel: bool = False

    def __post_init__(self):
        if self.per_gpu_components and (self.device != "gpu" or not self.gpus):
            raise ValueError("per_gpu_components needs device 'gpu' and the GPUs named (gpus, --gpus 0,1)")
        if self.cfg_parallel and self.device == "gpu" and not self.gpus:
            raise ValueError("cfg_parallel on device 'gpu' needs the GPUs of the two halves named (gpus, --gpus 0,1)")

    @property
    def halves_in_parallel(self) -> bool:
        """cfg_parallel where it can take effect: on CPU, or with two or more GPUs."""
        return self.cfg_parallel and (self.device != "gpu" or len(self.gpus) >= 2)
