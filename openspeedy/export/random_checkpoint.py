"""Random-initialized I2VGen-XL checkpoints of the real architecture, made locally and deterministically.

Same component classes and wiring as the published ``ali-vilab/i2vgen-xl`` (four UNet levels, a VAE
that downsamples 8x, OpenCLIP-style text tower, CLIP vision tower with projection, the real scheduler
config). TINY has widths small enough that a whole video takes well under a second on a CPU (tests and
the demo); FULL_SIZE has the published widths, for benchmarks. No network is needed (the tokenizer
files are written here too).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, I2VGenXLPipeline, I2VGenXLUNet
from tokenizers import pre_tokenizers
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from openspeedy.components import CLIPImageProcessor
from openspeedy.contracts import PROMPT_TOKENS

# The published scheduler config of I2VGen-XL (docs/models.md): DDIM, v-prediction, zero-SNR.
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="squaredcos_cap_v2",
    clip_sample=False,
    set_alpha_to_one=True,
    steps_offset=1,
    prediction_type="v_prediction",
    rescale_betas_zero_snr=True,
    timestep_spacing="leading",
)


@dataclass(frozen=True)
class Architecture:
    """Widths and depths of the five networks; everything else is the published architecture."""

    text: dict
    vision: dict
    image_size: int  # the CLIP processor's crop
    vae: dict
    unet: dict


TINY = Architecture(
    text=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, projection_dim=16),
    vision=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                patch_size=8, projection_dim=16),
    image_size=32,
    vae=dict(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4, sample_size=64),
    unet=dict(sample_size=8, block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4,
              cross_attention_dim=16, attention_head_dim=2),
)

# The published ali-vilab/i2vgen-xl configs (docs/models.md): UNet 1,420.5 M parameters; OpenCLIP
# ViT-H text tower; CLIP ViT-H/14 vision tower with a 1024 projection; the SD-style VAE.
FULL_SIZE = Architecture(
    text=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
              projection_dim=1024, vocab_size=49408),
    vision=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                image_size=224, patch_size=14, projection_dim=1024),
    image_size=224,
    vae=dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32, sample_size=512),
    unet=dict(sample_size=32, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, norm_num_groups=32,
              cross_attention_dim=1024, attention_head_dim=64),
)


def _tokenizer() -> CLIPTokenizer:
    # Byte-level BPE over single characters (plus a few merges): every UTF-8 text tokenizes, like the
    # real CLIP vocabulary, in a vocabulary of a few hundred entries.
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for symbol in alphabet + [s + "</w>" for s in alphabet]:
        vocab.setdefault(symbol, len(vocab))
    merges = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("i", "n"), ("e", "r</w>")]
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=PROMPT_TOKENS)


def build_checkpoint(directory: Path, architecture: Architecture = TINY, seed: int = 0,
                     dtype: torch.dtype = torch.float32) -> Path:
    """Writes a random-initialized diffusers-layout checkpoint (unet, vae, text_encoder, tokenizer,
    image_encoder, feature_extractor, scheduler, model_index.json) to ``directory``. Same seed, same bytes."""
    directory = Path(directory)
    tokenizer = _tokenizer()
    a = architecture

    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            **({"vocab_size": len(tokenizer)} | a.text),
            max_position_embeddings=PROMPT_TOKENS,
            hidden_act="gelu",
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    torch.manual_seed(seed + 1)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**a.vision))
    feature_extractor = CLIPImageProcessor(
        size={"shortest_edge": a.image_size}, crop_size={"height": a.image_size, "width": a.image_size}
    )
    torch.manual_seed(seed + 2)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        scaling_factor=0.18125,  # I2VGen-XL's own factor, not Stable Diffusion's 0.18215
        **a.vae,
    )
    torch.manual_seed(seed + 3)
    unet = I2VGenXLUNet(in_channels=4, out_channels=4, **a.unet)

    pipeline = I2VGenXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        image_encoder=image_encoder,
        feature_extractor=feature_extractor,
        unet=unet,
        scheduler=DDIMScheduler(**SCHEDULER_CONFIG),
    )
    pipeline.to(dtype=dtype).save_pretrained(directory)
    return directory


def build_tiny_checkpoint(directory: Path, seed: int = 0) -> Path:
    """The tiny model of tests and the demo: a whole video in well under a second on a CPU."""
    return build_checkpoint(directory, TINY, seed)
