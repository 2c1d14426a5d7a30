"""The I2VGen-XL UNet component on PyTorch: diffusers' weights, with the techniques its options turn on
(openspeedy/unet/options.py) applied in the recipe's order (openspeedy/unet/recipe.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from diffusers import I2VGenXLUNet

from openspeedy import contracts
from openspeedy.compilation import compiling
from openspeedy.cuda_graphs import run_graphed
from openspeedy.example_inputs import as_cfg_pair, example_inputs, unet_sizes
from openspeedy.model_parameters import parse_shapes
from openspeedy.unet import feature_reuse, recipe, staged_forward
from openspeedy.unet.options import UNetOptions
from openspeedy.unet.share_cfg_rows import UNET_MODEL_INPUTS, RowSharing


class UNet:
    """The I2VGen-XL UNet in PyTorch: one noise prediction for a (CFG) batch.

    Its config parameters are UNetOptions (a key it does not know fails the load); ``recipe_report``
    says, a line a technique, what each did or why it did not. With the inputs DEEP_FEATURES /
    RETURN_DEEP_FEATURES it runs the shallow or the feature-keeping path of step-level feature reuse
    instead."""

    contract = contracts.UNET
    runtime = "torch"
    weight_folders = ("unet",)

    def __init__(self, directory: Path, device: torch.device, dtype: torch.dtype, parameters: Mapping[str, str]):
        self.options = UNetOptions.from_parameters(parameters)
        self.device, self.dtype = device, dtype
        # The compile caches are set before the GEGLU kernel's library reads where its cache is.
        with compiling("unet", parameters, directory, device, compiles=bool(self.options.compile_mode)):
            self.model = I2VGenXLUNet.from_pretrained(directory / "unet", dtype=dtype).to(device).eval()
            self.eager_model = self.model  # the module steps change it in place; compile_mode rebinds ``model``
            self.reuses_features = feature_reuse.shallow_path_supported(self.eager_model)
            self.row_sharing: RowSharing | None = None  # share_cfg_rows sets it
            self.inductor_settings: dict[str, object] = {}  # inductor_options and fused_residuals add to it
            # The functions each path runs: the recipe compiles them; ``paths`` holds them between the
            # contract's FP32 and the model's dtype, and the recipe may graph that.
            self.inner = {"plain": self.plain, "full": self._full, "shallow": self._shallow}
            self.paths = {name: self._in_contract_precision(name) for name in self.inner}
            self.outcomes = recipe.apply(self, self.options)
            for frames, height, width in parse_shapes(parameters.get("warmup_shapes", "")):
                inputs = example_inputs(self.contract, self.sizes(frames, height, width), device=self.device)
                if self.row_sharing:  # compile and capture what the pipeline's CFG calls send
                    inputs = as_cfg_pair(inputs)
                self.infer(inputs)
                if self.options.feature_reuse:
                    deep = self.infer(inputs | {"RETURN_DEEP_FEATURES": torch.ones(1, dtype=torch.int32)})
                    self.infer(inputs | {"DEEP_FEATURES": deep["DEEP_FEATURES"]})
        recipe.log_report(self.outcomes)

    @property
    def recipe_report(self) -> list[str]:
        """A line a technique, in the order applied: ``name: applied (what)`` or ``name: skipped: why``."""
        return [outcome.line() for outcome in self.outcomes]

    def plain(self, sample, timestep, encoder_hidden_states, fps, image_latents, image_embeddings):
        return (self.model(sample, timestep, fps=fps, image_latents=image_latents, image_embeddings=image_embeddings,
                           encoder_hidden_states=encoder_hidden_states, return_dict=False)[0],)

    def staged_plain(self, sample, timestep, encoder_hidden_states, fps, image_latents, image_embeddings):
        return staged_forward.forward(self.eager_model, sample, timestep, fps, image_latents, image_embeddings,
                                      encoder_hidden_states)[:1]

    def _full(self, sample, timestep, encoder_hidden_states, fps, image_latents, image_embeddings):
        return feature_reuse.full_step(self.eager_model, sample, timestep, fps, image_latents, image_embeddings,
                                       encoder_hidden_states)

    def _shallow(self, sample, timestep, encoder_hidden_states, fps, image_latents, image_embeddings, deep):
        return (feature_reuse.shallow_step(self.eager_model, sample, timestep, fps, image_latents, image_embeddings,
                                           encoder_hidden_states, deep),)

    def _in_contract_precision(self, path: str):
        """Path ``path`` between the contract's FP32 tensors and the model's dtype (integers pass as they
        are), so that a CUDA graph of it holds the casts too. The function is looked up at each call:
        the recipe replaces it with its compiled form."""

        def call(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
            outputs = self.inner[path](*(t.to(self.dtype) if t.is_floating_point() else t for t in tensors))
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
            (noise,) = self._run("shallow", args, deep.to(self.device))
            return {"NOISE_PRED": noise}
        if keep is not None and int(keep.reshape(-1)[0]):
            noise, features = self._run("full", args)
            return {"NOISE_PRED": noise, "DEEP_FEATURES": features}
        (noise,) = self._run("plain", args)
        return {"NOISE_PRED": noise}

    def _run(self, path: str, args: list[torch.Tensor], *extra: torch.Tensor) -> tuple[torch.Tensor, ...]:
        def run(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return run_graphed(self.paths[path], *tensors)  # a shape's first call compiles and captures it

        if self.row_sharing is None:
            return run(*args, *extra)
        return self.row_sharing(run, args, *extra)
