"""Step-level feature reuse (DeepCache) for the I2VGen-XL UNet: an opt-in approximation.

Between neighbouring denoising steps the UNet's deep features change little. A full step runs the
whole UNet and keeps the input of its last up block (the deep features); the next N-1 steps run only
the shallow path (the input convolution and temporal transformer, the first down block without its
downsampler, the last up block) and take the deep features from that full step. The shallow path is
a fraction of the UNet's work (the deep levels hold most of its layers), so a step costs that fraction.

diffusers' I2VGenXLUNet.forward runs the whole network in one function, so its preamble (time, fps
and context embeddings, the image-latent encoder) and its epilogue are restated here, statement for
statement, around diffusers' own blocks; tests/ holds the full path to diffusers' forward bit for bit.
"""

from __future__ import annotations

import torch
from diffusers import I2VGenXLUNet


def _prepare(unet: I2VGenXLUNet, sample, timestep, fps, image_latents, image_embeddings, encoder_hidden_states):
    """diffusers' forward up to the first down block: (hidden states, time embedding, context, frames)."""
    batch_size, channels, num_frames, height, width = sample.shape
    timesteps = timestep
    if len(timesteps.shape) == 0:
        timesteps = timesteps[None].to(sample.device)
    timesteps = timesteps.expand(sample.shape[0])
    t_emb = unet.time_proj(timesteps).to(dtype=unet.dtype)
    t_emb = unet.time_embedding(t_emb, None)
    fps = fps.expand(fps.shape[0])
    fps_emb = unet.fps_embedding(unet.time_proj(fps).to(dtype=unet.dtype))
    emb = t_emb + fps_emb
    emb = emb.repeat_interleave(num_frames, dim=0, output_size=emb.shape[0] * num_frames)

    context_emb = sample.new_zeros(batch_size, 0, unet.config.cross_attention_dim)
    context_emb = torch.cat([context_emb, encoder_hidden_states], dim=1)
    first = image_latents[:, :, :1, :]
    first = first.permute(0, 2, 1, 3, 4).reshape(first.shape[0] * first.shape[2], first.shape[1], first.shape[3],
                                                 first.shape[4])
    first = unet.image_latents_context_embedding(first)
    _batch, _channels, _height, _width = first.shape
    first = first.permute(0, 2, 3, 1).reshape(_batch, _height * _width, _channels)
    context_emb = torch.cat([context_emb, first], dim=1)
    image_emb = unet.context_embedding(image_embeddings)
    image_emb = image_emb.view(-1, unet.config.in_channels, unet.config.cross_attention_dim)
    context_emb = torch.cat([context_emb, image_emb], dim=1)
    context_emb = context_emb.repeat_interleave(num_frames, dim=0, output_size=context_emb.shape[0] * num_frames)

    image_latents = image_latents.permute(0, 2, 1, 3, 4).reshape(
        image_latents.shape[0] * image_latents.shape[2], image_latents.shape[1], image_latents.shape[3],
        image_latents.shape[4])
    image_latents = unet.image_latents_proj_in(image_latents)
    image_latents = (
        image_latents[None, :].reshape(batch_size, num_frames, channels, height, width).permute(0, 3, 4, 1, 2)
        .reshape(batch_size * height * width, num_frames, channels)
    )
    image_latents = unet.image_latents_temporal_encoder(image_latents)
    image_latents = image_latents.reshape(batch_size, height, width, num_frames, channels).permute(0, 4, 3, 1, 2)

    sample = torch.cat([sample, image_latents], dim=1)
    sample = sample.permute(0, 2, 1, 3, 4).reshape((sample.shape[0] * num_frames, -1) + sample.shape[3:])
    sample = unet.conv_in(sample)
    sample = unet.transformer_in(sample, num_frames=num_frames, return_dict=False)[0]
    return sample, emb, context_emb, num_frames


def _finish(unet: I2VGenXLUNet, sample: torch.Tensor, num_frames: int) -> torch.Tensor:
    sample = unet.conv_out(unet.conv_act(unet.conv_norm_out(sample)))
    return sample[None, :].reshape((-1, num_frames) + sample.shape[1:]).permute(0, 2, 1, 3, 4)


def _up(block, sample, emb, res_samples, context_emb, upsample_size, num_frames):
    if getattr(block, "has_cross_attention", False):
        return block(hidden_states=sample, temb=emb, res_hidden_states_tuple=res_samples,
                     encoder_hidden_states=context_emb, upsample_size=upsample_size, num_frames=num_frames)
    return block(hidden_states=sample, temb=emb, res_hidden_states_tuple=res_samples, upsample_size=upsample_size,
                 num_frames=num_frames)


def full_step(unet: I2VGenXLUNet, sample, timestep, fps, image_latents, image_embeddings, encoder_hidden_states):
    """diffusers' forward, returning (noise prediction, deep features): the last up block's input."""
    forward_upsample_size = any(s % 2**unet.num_upsamplers != 0 for s in sample.shape[-2:])
    sample, emb, context_emb, num_frames = _prepare(
        unet, sample, timestep, fps, image_latents, image_embeddings, encoder_hidden_states)
    down_block_res_samples = (sample,)
    for block in unet.down_blocks:
        if getattr(block, "has_cross_attention", False):
            sample, res = block(hidden_states=sample, temb=emb, encoder_hidden_states=context_emb,
                                num_frames=num_frames)
        else:
            sample, res = block(hidden_states=sample, temb=emb, num_frames=num_frames)
        down_block_res_samples += res
    sample = unet.mid_block(sample, emb, encoder_hidden_states=context_emb, num_frames=num_frames)
    upsample_size = None
    for i, block in enumerate(unet.up_blocks):
        is_final_block = i == len(unet.up_blocks) - 1
        res_samples = down_block_res_samples[-len(block.resnets):]
        down_block_res_samples = down_block_res_samples[: -len(block.resnets)]
        if not is_final_block and forward_upsample_size:
            upsample_size = down_block_res_samples[-1].shape[2:]
        if is_final_block:
            deep = sample
        sample = _up(block, sample, emb, res_samples, context_emb, upsample_size, num_frames)
    return _finish(unet, sample, num_frames), deep


def shallow_step(unet: I2VGenXLUNet, sample, timestep, fps, image_latents, image_embeddings, encoder_hidden_states,
                 deep_features):
    """The shallow path only, with ``deep_features`` from an earlier ``full_step``: the noise prediction."""
    sample, emb, context_emb, num_frames = _prepare(
        unet, sample, timestep, fps, image_latents, image_embeddings, encoder_hidden_states)
    first = unet.down_blocks[0]
    res_samples = (sample,)
    # The first down block's layers without its downsampler: exactly the skip connections the last up
    # block takes (it takes len(resnets) = layers + 1 of them).
    for resnet, temp_conv, attn, temp_attn in zip(first.resnets, first.temp_convs, first.attentions,
                                                  first.temp_attentions):
        sample = resnet(sample, emb)
        sample = temp_conv(sample, num_frames=num_frames)
        sample = attn(sample, encoder_hidden_states=context_emb, return_dict=False)[0]
        sample = temp_attn(sample, num_frames=num_frames, return_dict=False)[0]
        res_samples += (sample,)
    last = unet.up_blocks[-1]
    sample = _up(last, deep_features.to(sample.dtype), emb, res_samples[-len(last.resnets):], context_emb, None,
                 num_frames)
    return _finish(unet, sample, num_frames)


def shallow_path_supported(unet: I2VGenXLUNet) -> bool:
    """The shallow path takes the first down block's layers as the last up block's skips: true for the
    published architecture (a cross-attention first block of N layers, a last up block of N + 1)."""
    first, last = unet.down_blocks[0], unet.up_blocks[-1]
    return hasattr(first, "attentions") and len(last.resnets) == len(first.resnets) + 1
