"""Step-level feature reuse (DeepCache) for the I2VGen-XL UNet: an opt-in approximation.

Between neighbouring denoising steps the UNet's deep features change little. A full step runs the
whole UNet and keeps the input of its last up block (the deep features); the next N-1 steps run only
the shallow path (the input convolution and temporal transformer, the first down block without its
downsampler, the last up block) and take the deep features from that full step. The shallow path is
a fraction of the UNet's work (the deep levels hold most of its layers), so a step costs that fraction.
Both paths are stages of the restated forward (openspeedy/unet/staged_forward.py), shared CFG rows
included.
"""

from __future__ import annotations

from diffusers import I2VGenXLUNet

from openspeedy.unet import staged_forward


def full_step(unet: I2VGenXLUNet, sample, timestep, fps, image_latents, image_embeddings, encoder_hidden_states):
    """diffusers' forward, returning (noise prediction, deep features): the last up block's input."""
    return staged_forward.forward(unet, sample, timestep, fps, image_latents, image_embeddings,
                                  encoder_hidden_states)


def shallow_step(unet: I2VGenXLUNet, sample, timestep, fps, image_latents, image_embeddings, encoder_hidden_states,
                 deep_features):
    """The shallow path only, with ``deep_features`` from an earlier ``full_step``: the noise prediction."""
    sample, emb, context_emb, num_frames, copies = staged_forward.prepare(
        unet, sample, timestep, fps, image_latents, image_embeddings, encoder_hidden_states)
    # The first down block's layers without its downsampler: exactly the skip connections the last up
    # block takes (it takes len(resnets) = layers + 1 of them).
    sample, emb, skips = staged_forward.first_block_layers(unet, sample, emb, context_emb, num_frames, copies)
    last = unet.up_blocks[-1]
    sample = staged_forward.up(last, deep_features.to(sample.dtype), emb, skips[-len(last.resnets):], context_emb,
                               None, num_frames)
    return staged_forward.finish(unet, sample, num_frames)


def shallow_path_supported(unet: I2VGenXLUNet) -> bool:
    """The shallow path takes the first down block's layers as the last up block's skips: true for the
    published architecture (a cross-attention first block of N layers, a last up block of N + 1)."""
    first, last = unet.down_blocks[0], unet.up_blocks[-1]
    return staged_forward.staged_first_block(unet) and len(last.resnets) == len(first.resnets) + 1
