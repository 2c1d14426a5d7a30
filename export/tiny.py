"""A tiny, random-initialized I2VGen-XL checkpoint of the real architecture, made locally and deterministically.

Same component classes and wiring as the published ``ali-vilab/i2vgen-xl`` (four UNet levels, a VAE
that downsamples 8x, OpenCLIP-style text tower, CLIP vision tower with projection, the real scheduler
config), with widths small enough that a whole video takes well under a second on a CPU. Tests and the
demo use it; no network is needed (the tokenizer files are written here too).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, I2VGenXLPipeline, I2VGenXLUNet
from tokenizers import pre_tokenizers
from transformers import (
    CLIPImageProcessorPil,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

# The published scheduler config of I2VGen-XL (see ENVIRONMENT.md): DDIM, v-prediction, zero-SNR.
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

CROSS_ATTENTION_DIM = 16
TINY_SAMPLE_SIZE = 8  # latent pixels: the default video is 64x64


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
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def build_tiny_checkpoint(directory: Path, seed: int = 0) -> Path:
    """Writes a diffusers-layout checkpoint (unet, vae, text_encoder, tokenizer, image_encoder,
    feature_extractor, scheduler) to ``directory`` and returns it. Same seed, same bytes."""
    directory = Path(directory)
    tokenizer = _tokenizer()

    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=CROSS_ATTENTION_DIM,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            projection_dim=CROSS_ATTENTION_DIM,
            hidden_act="gelu",
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )

    torch.manual_seed(seed + 1)
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
            projection_dim=CROSS_ATTENTION_DIM,
        )
    )
    feature_extractor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})

    torch.manual_seed(seed + 2)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=TINY_SAMPLE_SIZE * 8,
        scaling_factor=0.18125,  # I2VGen-XL's own factor, not Stable Diffusion's 0.18215
    )

    torch.manual_seed(seed + 3)
    unet = I2VGenXLUNet(
        sample_size=TINY_SAMPLE_SIZE,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        norm_num_groups=4,
        cross_attention_dim=CROSS_ATTENTION_DIM,
        attention_head_dim=2,
    )

    I2VGenXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        image_encoder=image_encoder,
        feature_extractor=feature_extractor,
        unet=unet,
        scheduler=DDIMScheduler(**SCHEDULER_CONFIG),
    ).save_pretrained(directory)
    return directory
