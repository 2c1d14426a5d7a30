"""The five neural components, each behind its contract: ``infer(inputs) -> outputs``.

The same objects run inside the Triton model instances and in process (tests, benchmarks), so what
is served is exactly what is tested. Inputs are torch tensors (numpy object arrays for BYTES), keyed by
the contract's tensor names; outputs are torch tensors on the component's device. The CLIP and VAE
components are here, the UNet's runtimes under openspeedy/unet/; ``load_component`` picks any of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Protocol

import PIL.Image
import torch
from diffusers import AutoencoderKL
from diffusers.image_processor import VaeImageProcessor
from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

try:  # transformers >= 5.2 names the Pillow implementation (the reference's, and torchvision-free)
    from transformers import CLIPImageProcessorPil as CLIPImageProcessor
except ImportError:  # older transformers 5: the class is the Pillow one
    from transformers import CLIPImageProcessor

from openspeedy import contracts
from openspeedy.compilation import compiler, compiling
from openspeedy.contracts import ModelContract
from openspeedy.cuda_graphs import GraphedCallable, run_graphed
from openspeedy.decoding import DEFAULT_MEMORY_BUDGET_BYTES, DEFAULT_TILE_ABOVE_PIXELS, ChunkedDecoder
from openspeedy.model_parameters import flag, parse_shapes
from openspeedy.unet.onnxruntime_runtime import OnnxRuntimeUNet
from openspeedy.unet.runtime import UNet

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
    replayed it measured the same. The UNet's graphs are one of its options (openspeedy/unet/options.py)."""
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
        with compiling(self.contract.name, options, directory, device, compiles=bool(options.get("compile_mode"))):
            self.vae = _load_vae(directory, device, dtype)
            if options.get("compile_mode"):
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


class VaeDecoder:
    """VAE decoder: latents to uint8 frames, in chunks under a memory budget (see openspeedy.decoding)."""

    contract = contracts.VAE_DECODER
    runtime = "torch"
    weight_folders = ("vae",)

    def __init__(self, directory: Path, device: torch.device, dtype: torch.dtype, options: Mapping[str, str]):
        with compiling(self.contract.name, options, directory, device, compiles=bool(options.get("compile_mode"))):
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
