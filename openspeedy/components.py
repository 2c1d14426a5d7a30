"""The five neural components, each behind its contract: ``infer(inputs) -> outputs``.

The same objects run inside the Triton model instances and in process (tests, benchmarks), so what
is served is exactly what is tested. Inputs are torch tensors (numpy object arrays for BYTES), keyed by
the contract's tensor names; outputs are torch tensors on the component's device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, I2VGenXLUNet
from diffusers.image_processor import VaeImageProcessor
from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

try:  # transformers >= 5.2 names the Pillow implementation (the reference's, and torchvision-free)
    from transformers import CLIPImageProcessorPil as CLIPImageProcessor
except ImportError:  # older transformers 5: the class is the Pillow one
    from transformers import CLIPImageProcessor

from openspeedy import contracts
from openspeedy.compilation import compiler, parse_inductor_options, use_compile_cache
from openspeedy.contracts import ModelContract
from openspeedy.cuda_graphs import GraphedCallable, run_graphed
from openspeedy.decoding import DEFAULT_MEMORY_BUDGET_BYTES, DEFAULT_TILE_ABOVE_PIXELS, ChunkedDecoder
from openspeedy.example_inputs import as_cfg_pair, example_inputs, unet_sizes
from openspeedy.model_config import flag
from openspeedy.unet import feature_reuse, staged_forward
from openspeedy.unet.fp8 import convert_linears_to_fp8, fp8_supported
from openspeedy.unet.geglu import use_fused_geglu
from openspeedy.unet.layout import (
    channels_last_joins,
    channels_last_temporal_convs,
    temporal_convs_as_2d,
    to_channels_last,
)
from openspeedy.unet.onnxruntime_runtime import OnnxRuntimeUNet
from openspeedy.unet.residual_gemm import fused_residual_settings
from openspeedy.unet.temporal_attention import use_temporal_attention_kernel

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class Component(Protocol):
    contract: ModelContract
    runtime: str  # "torch", or the config parameter ``runtime`` that selects this class
    # Sub-folders of the model version directory it loads, in the diffusers checkpoint layout (export
    # places them; empty where export writes the runtime's own files).
    weight_folders: tuple[str, ...]

    def infer(self, inputs: Mapping[str, Any]) -> dict[str, torch.Tensor]: ...


def graphed_on_cuda(fn, device: torch.device, options: Mapping[str, str], default: bool):
    """``fn`` replayed from a CUDA graph per input shape, on CUDA where the config parameter ``cuda_graphs``
    (``default`` where it is not set) asks; ``max_cuda_graphs`` (4) bounds the shapes, later ones run ``fn``.

    The CLIP encoders default to on: eager, Python launching the kernels takes most of a call (on an
    H200 a text encoder call took 19 ms eager and 2.4 ms replayed, an image encoder call 36 and 6.7 ms,
    its image resizing included). The VAE encoder has none: its 13 ms at 512x512 are GPU work, and
    replayed it measured the same. The UNet's graphs are a runtime option of its variants."""
    if device.type == "cuda" and flag(options, "cuda_graphs", default=default):
        return GraphedCallable(fn, max_graphs=int(options.get("max_cuda_graphs", 4)))
    return fn


class TextEncoder:
    """CLIP text tower: penultimate hidden state through the final layer norm (the reference's clip_skip=1)."""

    contract = contracts.TEXT_ENCODER
    runtime = "torch"
    weight_folders = ("text_encoder", "tokenizer")

    def __init__(self, directory: Path, device: torch.device, dtype: torch.dtype, options: Mapping[str, str]):
        self.device = device
        self.tokenizer = CLIPTokenizer.from_pretrained(directory / "tokenizer")
        self.model = CLIPTextModel.from_pretrained(directory / "text_encoder", dtype=dtype).to(device).eval()
        self.use_mask = getattr(self.model.config, "use_attention_mask", False)
        self.embed = graphed_on_cuda(self._embed, device, options, default=True)

    def _embed(self, input_ids: torch.Tensor, *mask: torch.Tensor) -> tuple[torch.Tensor]:
        hidden = self.model(input_ids, attention_mask=mask[0] if mask else None, output_hidden_states=True)
        return (self.model.final_layer_norm(hidden.hidden_states[-2]).float(),)

    @torch.inference_mode()
    def infer(self, inputs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        prompts = [bytes(p).decode("utf-8") for p in inputs["PROMPT"]]
        tokens = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        mask = (tokens.attention_mask.to(self.device),) if self.use_mask else ()
        (embeds,) = run_graphed(self.embed, tokens.input_ids.to(self.device), *mask)
        return {"PROMPT_EMBEDS": embeds}


class ImageEncoder:
    """CLIP vision tower. Takes the square crop; resizes and normalizes it like the reference pipeline."""

    contract = contracts.IMAGE_ENCODER
    runtime = "torch"
    weight_folders = ("image_encoder", "feature_extractor")

    def __init__(self, directory: Path, device: torch.device, dtype: torch.dtype, options: Mapping[str, str]):
        self.device, self.dtype = device, dtype
        self.processor = CLIPImageProcessor.from_pretrained(directory / "feature_extractor")
        self.model = (
            CLIPVisionModelWithProjection.from_pretrained(directory / "image_encoder", dtype=dtype).to(device).eval()
        )
        self.size = (self.processor.crop_size["width"], self.processor.crop_size["height"])
        self.embed = graphed_on_cuda(self._embed, device, options, default=True)

    def _embed(self, pixels: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.model(pixels).image_embeds.float(),)

    @torch.inference_mode()
    def infer(self, inputs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        crops = [
            PIL.Image.fromarray(image).resize(self.size, PIL.Image.BILINEAR)
            for image in inputs["IMAGE"].cpu().numpy()
        ]
        pixels = VaeImageProcessor.numpy_to_pt(VaeImageProcessor.pil_to_numpy(crops))
        pixels = self.processor(
            images=pixels, do_normalize=True, do_center_crop=False, do_resize=False, do_rescale=False,
            return_tensors="pt",
        ).pixel_values
        (embeds,) = run_graphed(self.embed, pixels.to(self.device, self.dtype))
        return {"IMAGE_EMBEDS": embeds}


def _load_vae(directory: Path, device: torch.device, dtype: torch.dtype) -> AutoencoderKL:
    return AutoencoderKL.from_pretrained(directory / "vae", dtype=dtype).to(device).eval()


class VaeEncoder:
    """VAE encoder: RGB image to the parameters of the latent posterior (sampling is the orchestrator's).

    The config parameter ``compile_mode`` compiles the encoder network (torch.compile, static shapes, like
    the decoder's: its convolutions, group norms and activations at full resolution are the same kind of
    work, which compiling halved in the decoder); each image size compiles once, the ``warmup_shapes``
    at load."""

    contract = contracts.VAE_ENCODER
    runtime = "torch"
    weight_folders = ("vae",)

    def __init__(self, directory: Path, device: torch.device, dtype: torch.dtype, options: Mapping[str, str]):
        self.device, self.dtype = device, dtype
        self.vae = _load_vae(directory, device, dtype)
        if options.get("compile_mode"):
            use_compile_cache(options)
            # vae.encode (slicing, tiling, the posterior) stays diffusers'; only the network it calls compiles.
            self.vae.encoder = compiler(options["compile_mode"], {})(self.vae.encoder)
        for _, height, width in parse_shapes(options.get("warmup_shapes", "")):
            self.infer({"IMAGE": torch.zeros(1, height, width, 3, dtype=torch.uint8)})

    @torch.inference_mode()
    def infer(self, inputs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        pixels = inputs["IMAGE"].to(self.device).permute(0, 3, 1, 2).float() / 255.0
        pixels = 2.0 * pixels - 1.0  # VaeImageProcessor.normalize
        posterior = self.vae.encode(pixels.to(self.dtype)).latent_dist
        # Contiguous, as it arrives through Triton or from a cache: the encoder's convolution leaves it
        # channels-last, and a layout difference changes the UNet's rounding downstream.
        return {"LATENT_PARAMETERS": posterior.parameters.float().contiguous()}


class UNet:
    """The I2VGen-XL UNet in PyTorch: one noise prediction for a (CFG) batch.

    Options (config parameters) choose the runtime techniques, each in its own module under
    openspeedy/unet/: fused QKV, temporal convolutions as 2D ones, the temporal attention kernel,
    torch.compile, whole-forward CUDA graphs, the CFG pair's shared layers once, the GEGLU inside its
    matrix product and the transformer blocks' residual additions inside theirs (QuACK, Hopper and
    newer). With the inputs DEEP_FEATURES / RETURN_DEEP_FEATURES it runs the shallow or the
    feature-keeping path of step-level feature reuse instead."""

    contract = contracts.UNET
    runtime = "torch"
    weight_folders = ("unet",)

    def __init__(self, directory: Path, device: torch.device, dtype: torch.dtype, options: Mapping[str, str]):
        self.device, self.dtype = device, dtype
        use_compile_cache(options)  # before the GEGLU kernel's library reads where its cache is
        self.model = I2VGenXLUNet.from_pretrained(directory / "unet", dtype=dtype).to(device).eval()
        if flag(options, "fuse_qkv"):
            self.model.fuse_qkv_projections()  # one matrix product for Q, K and V where they share an input
        if flag(options, "temporal_attention_kernel"):
            use_temporal_attention_kernel(self.model)  # after fuse_qkv, which resets the processors
        if flag(options, "fused_geglu"):
            use_fused_geglu(self.model)  # the feed-forward's activation inside its matrix product
        if flag(options, "temporal_conv2d"):
            temporal_convs_as_2d(self.model)  # joins the channels-last graph, see openspeedy/unet/layout.py
        if flag(options, "channels_last"):
            to_channels_last(self.model)
        if flag(options, "channels_last_joins"):
            channels_last_joins(self.model)
        if flag(options, "channels_last_temporal_convs"):
            if not flag(options, "temporal_conv2d"):
                raise ValueError("unet: channels_last_temporal_convs needs temporal_conv2d (the layout is that of "
                                 "the temporal convolutions as 2D ones)")
            channels_last_temporal_convs(self.model)
        if flag(options, "fused_residuals") and not options.get("compile_mode"):
            raise ValueError("unet: fused_residuals needs compile_mode (the fusion is a pass of the compiler)")
        if flag(options, "fp8"):
            if not fp8_supported(device):
                raise ValueError("unet: fp8 needs a CUDA GPU of compute capability 8.9 or newer (Ada, Hopper)")
            convert_linears_to_fp8(self.model)
        self.eager_model = self.model
        self.reuses_features = feature_reuse.shallow_path_supported(self.eager_model)
        # A CFG call whose two rows share the sample computes the layers before the first cross-attention
        # once (openspeedy/unet/staged_forward.py); the plain path is then the staged forward too.
        self.shares_cfg_rows = flag(options, "share_cfg_rows")
        self.last_rows_shared = False  # whether the last CFG call's rows were shared: see _run_sharing_rows
        if self.shares_cfg_rows and not staged_forward.staged_first_block(self.eager_model):
            raise ValueError("unet: share_cfg_rows needs a cross-attention first down block (the published one)")
        plain = self._staged_plain if self.shares_cfg_rows else self._plain
        paths = {"plain": plain, "full": self._full, "shallow": self._shallow}
        compile_mode = options.get("compile_mode", "")
        if compile_mode:
            settings = parse_inductor_options(options.get("inductor_options", ""))
            if flag(options, "fused_residuals"):  # the residual additions inside their matrix products
                settings |= fused_residual_settings(device, dtype)
            compile = compiler(compile_mode, settings)
            staged = ("full", "shallow", "plain") if self.shares_cfg_rows else ("full", "shallow")
            if not self.shares_cfg_rows:  # diffusers' forward, which the plain path calls
                self.model = compile(self.model)
            paths |= {name: compile(paths[name]) for name in staged}
        # Each path graphs its own shapes (up to max_cuda_graphs each); later shapes run without a graph.
        self.paths = {name: graphed_on_cuda(self._in_contract_precision(fn), device, options, default=False)
                      for name, fn in paths.items()}
        for frames, height, width in parse_shapes(options.get("warmup_shapes", "")):
            inputs = example_inputs(self.contract, self.sizes(frames, height, width), device=self.device)
            if self.shares_cfg_rows:  # compile and capture what the pipeline's CFG calls send
                inputs = as_cfg_pair(inputs)
            self.infer(inputs)
            if flag(options, "feature_reuse"):
                deep = self.infer(inputs | {"RETURN_DEEP_FEATURES": torch.ones(1, dtype=torch.int32)})
                self.infer(inputs | {"DEEP_FEATURES": deep["DEEP_FEATURES"]})

    def _plain(self, sample, timestep, encoder_hidden_states, fps, image_latents, image_embeddings):
        return (self.model(sample, timestep, fps=fps, image_latents=image_latents, image_embeddings=image_embeddings,
                           encoder_hidden_states=encoder_hidden_states, return_dict=False)[0],)

    def _staged_plain(self, sample, timestep, encoder_hidden_states, fps, image_latents, image_embeddings):
        return staged_forward.forward(self.eager_model, sample, timestep, fps, image_latents, image_embeddings,
                                      encoder_hidden_states)[:1]

    def _full(self, sample, timestep, encoder_hidden_states, fps, image_latents, image_embeddings):
        return feature_reuse.full_step(self.eager_model, sample, timestep, fps, image_latents, image_embeddings,
                                       encoder_hidden_states)

    def _shallow(self, sample, timestep, encoder_hidden_states, fps, image_latents, image_embeddings, deep):
        return (feature_reuse.shallow_step(self.eager_model, sample, timestep, fps, image_latents, image_embeddings,
                                           encoder_hidden_states, deep),)

    def _in_contract_precision(self, fn):
        """``fn`` between the contract's FP32 tensors and the model's dtype (integers pass as they are), so
        that a CUDA graph of it holds the casts too."""

        def call(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
            outputs = fn(*(t.to(self.dtype) if t.is_floating_point() else t for t in tensors))
            return tuple(output.float() for output in outputs)

        return call

    def sizes(self, frames: int, height: int, width: int, batch: int = 2) -> dict[str, int]:
        """The contract's axis sizes for one CFG call at a video size in pixels."""
        return unet_sizes(self.eager_model.config, frames, height // 8, width // 8, batch)

    @torch.inference_mode()
    def infer(self, inputs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        args = [inputs[name].to(self.device) for name in UNET_MODEL_INPUTS]
        deep, keep = inputs.get("DEEP_FEATURES"), inputs.get("RETURN_DEEP_FEATURES")
        if (deep is not None or keep is not None) and not self.reuses_features:
            raise ValueError("unet: this architecture has no shallow path for feature reuse")
        if deep is not None:
            (noise,) = self._run_sharing_rows("shallow", args, deep.to(self.device))
            return {"NOISE_PRED": noise}
        if keep is not None and int(keep.reshape(-1)[0]):
            noise, features = self._run_sharing_rows("full", args)
            return {"NOISE_PRED": noise, "DEEP_FEATURES": features}
        (noise,) = self._run_sharing_rows("plain", args)
        return {"NOISE_PRED": noise}

    def _run_sharing_rows(self, path: str, args: list[torch.Tensor], *extra: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``path`` on ``args``, with SAMPLE, FPS and IMAGE_LATENTS cut to one row where a CFG pair's two
        rows hold the same values in them (what the pipeline sends): the staged forward then computes
        their shared layers once. Whether they do is a comparison on the device. After a call whose rows
        were shared, the next one launches the one-row forward before the comparison's answer is back,
        then reads it (and computes the pair in full where the rows differ): reading it first would leave
        the GPU idle at every step while the CPU copies the inputs in and launches the graph."""
        if not self.shares_cfg_rows or args[0].shape[0] != 2:
            return self._run(path, *args, *extra)
        positions = [UNET_MODEL_INPUTS.index(name) for name in contracts.UNET_CFG_SHARED_INPUTS]
        one_row = [arg[:1] if i in positions else arg for i, arg in enumerate(args)]
        rows_equal = read_later(torch.stack([(args[i][0] == args[i][1]).all() for i in positions]).all())
        if self.last_rows_shared:
            outputs = self._run(path, *one_row, *extra)
            if rows_equal():
                return outputs
        self.last_rows_shared = rows_equal()
        return self._run(path, *(one_row if self.last_rows_shared else args), *extra)

    def _run(self, path: str, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return run_graphed(self.paths[path], *tensors)  # a shape's first call compiles and captures it


def read_later(flag: torch.Tensor) -> Callable[[], bool]:
    """``bool(flag)``, read when the returned function is called. On CUDA the value is copied to pinned
    host memory now, in stream order, so the read waits for that copy alone and not for the work
    launched after it, as ``bool(flag)`` then would."""
    if flag.device.type != "cuda":
        value = bool(flag)
        return lambda: value
    host = torch.empty((), dtype=torch.bool, pin_memory=True)
    host.copy_(flag, non_blocking=True)
    copied = torch.cuda.Event()
    copied.record()

    def read() -> bool:
        copied.synchronize()
        return bool(host)

    return read


# The UNet's own inputs, in its contract's order; the contract's optional inputs steer feature reuse.
UNET_MODEL_INPUTS = contracts.UNET_EXPORTED.input_names


class VaeDecoder:
    """VAE decoder: latents to uint8 frames, in chunks under a memory budget (see openspeedy.decoding)."""

    contract = contracts.VAE_DECODER
    runtime = "torch"
    weight_folders = ("vae",)

    def __init__(self, directory: Path, device: torch.device, dtype: torch.dtype, options: Mapping[str, str]):
        if options.get("compile_mode"):
            use_compile_cache(options)
        self.decoder = ChunkedDecoder(
            _load_vae(directory, device, dtype),
            device,
            dtype,
            memory_budget_bytes=int(options.get("memory_budget_bytes", DEFAULT_MEMORY_BUDGET_BYTES)),
            tile_above_pixels=int(options.get("tile_above_pixels", DEFAULT_TILE_ABOVE_PIXELS)),
            compile_mode=options.get("compile_mode", ""),
        )
        channels = self.decoder.vae.config.latent_channels
        for frames, height, width in parse_shapes(options.get("warmup_shapes", "")):
            # Measures the decode cost at this size (the automatic chunk) and warms the kernels.
            scale = self.decoder.spatial_scale
            self.decoder.decode(torch.randn(frames, channels, height // scale, width // scale), chunk_size=0)

    def infer(self, inputs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        chunk = int(inputs["DECODE_CHUNK_SIZE"][0])
        if chunk < 0:
            raise ValueError(f"DECODE_CHUNK_SIZE must be >= 0, got {chunk}")
        return {"FRAMES": self.decoder.decode(inputs["LATENTS"], chunk)}


def parse_shapes(text: str) -> list[tuple[int, int, int]]:
    """ "16x512x512,24x768x768" -> [(16, 512, 512), (24, 768, 768)]: video sizes to warm up for."""
    shapes = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        frames, height, width = (int(n) for n in item.lower().split("x"))
        shapes.append((frames, height, width))
    return shapes


# Every class that serves a component, keyed by (model name, runtime): the config parameter ``runtime``
# picks one (absent: "torch"). Other runtimes keep the contract and model name; see
# openspeedy/export/unet_repository.py.
RUNTIME_CLASSES: dict[tuple[str, str], type] = {
    (cls.contract.name, cls.runtime): cls
    for cls in (TextEncoder, ImageEncoder, VaeEncoder, UNet, VaeDecoder, OnnxRuntimeUNet)
}
# The PyTorch class of each component, in the order of contracts.COMPONENTS.
COMPONENT_CLASSES: dict[str, type] = {
    contract.name: RUNTIME_CLASSES[contract.name, "torch"] for contract in contracts.COMPONENTS
}


def load_component(
    model_name: str,
    directory: Path,
    device: str | torch.device = "cpu",
    dtype: str = "float32",
    options: Mapping[str, str] | None = None,
):
    """Loads one component from a model version directory (its class's ``weight_folders``).

    ``options`` are the model's config parameters, for components that take any (``runtime`` among them)."""
    options = options or {}
    runtime = options.get("runtime", "torch")
    cls = COMPONENT_CLASSES[model_name] if runtime == "torch" else RUNTIME_CLASSES.get((model_name, runtime))
    if cls is None:
        known = ["torch"] + [r for (name, r) in RUNTIME_CLASSES if name == model_name]
        raise ValueError(f"{model_name}: unknown runtime {runtime!r} (this backend runs {known})")
    device = torch.device(device)
    if device.type == "cuda" and torch.backends.cudnn.is_available():
        # Raises torch's own error if the cuDNN this process loaded is not the one torch was built with
        # (a library path can put another first): otherwise it runs, silently slower, see server.py.
        torch.backends.cudnn.version()
    return cls(Path(directory), device, DTYPES[dtype], options)


def check_tensors(contract: ModelContract, specs: str, tensors: Mapping[str, Any]) -> None:
    """Raises ValueError unless ``tensors`` has every required tensor of the contract, with its dtype and rank."""
    declared = contract.inputs if specs == "inputs" else contract.outputs
    for spec in declared:
        if spec.name not in tensors:
            if spec.optional:
                continue
            raise ValueError(f"{contract.name}: missing {specs[:-1]} {spec.name}")
        value = tensors[spec.name]
        dtype = _dtype_of(value)
        if dtype != spec.numpy_dtype or not spec.shape_matches(tuple(value.shape)):
            raise ValueError(
                f"{contract.name}: {spec.name} must be {spec.datatype} {list(spec.dims)}, "
                f"got {dtype} {list(value.shape)}"
            )


def _dtype_of(value: Any) -> np.dtype:
    if isinstance(value, torch.Tensor):
        return np.dtype(str(value.dtype).removeprefix("torch."))
    return np.asarray(value).dtype
