"""diffusers' ``I2VGenXLUNet.forward``, restated in stages, so that other paths can start or stop inside it.

diffusers runs the whole network in one function. Two of OpenSpeedy's paths need its insides: feature
reuse (openspeedy/unet/feature_reuse.py) keeps the last up block's input and runs a shallow path on it,
and the CFG pair's shared layers run once. The statements are diffusers' own, around diffusers' own
blocks; tests/ hold ``forward`` to diffusers' forward bit for bit.

Shared CFG rows: classifier-free guidance calls the UNet with two rows, unconditional and conditional,
that carry the same noisy sample, image latents, timestep and fps; only the text and image embeddings
differ. Everything before the first cross-attention (the image-latent encoder, the input convolution
and temporal transformer, the first block's first resnet and temporal convolution) computes the same
values in both rows. Passing ``sample``, ``fps`` and ``image_latents`` with one row, and the embeddings
with the CFG batch's rows, computes that part once and the rest for each row.
"""

from __future__ import annotations

import torch
from diffusers import I2VGenXLUNet


def _rows(tensor: torch.Tensor, copies: int) -> torch.Tensor:
    """The shared row (frames-major within it) repeated for every CFG row; cat keeps channels-last."""
    return tensor if copies == 1 else torch.cat([tensor] * copies)


def prepare(unet: I2VGenXLUNet, sample, timestep, fps, image_latents, image_embeddings, encoder_hidden_states):
    """Up to the first down block: (hidden states, time embedding, context, frames, copies), where the
    hidden states and time embedding have ``sample``'s rows and ``copies`` times that is the CFG batch."""
    batch_size, channels, num_frames, height, width = sample.shape
    rows = encoder_hidden_states.shape[0]
    if rows % batch_size:
        raise ValueError(f"unet: SAMPLE has {batch_size} rows, ENCODER_HIDDEN_STATES {rows}: one, or as many")
    copies = rows // batch_size
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

    context_emb = sample.new_zeros(rows, 0, unet.config.cross_attention_dim)
    context_emb = torch.cat([context_emb, encoder_hidden_states], dim=1)
    first = image_latents[:, :, :1, :]
    first = first.permute(0, 2, 1, 3, 4).reshape(first.shape[0] * first.shape[2], first.shape[1], first.shape[3],
                                                 first.shape[4])
    first = unet.image_latents_context_embedding(first)
    _batch, _channels, _height, _width = first.shape
    first = first.permute(0, 2, 3, 1).reshape(_batch, _height * _width, _channels)
    context_emb = torch.cat([context_emb, _rows(first, copies)], dim=1)
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
    return sample, emb, context_emb, num_frames, copies


def first_block_layers(unet: I2VGenXLUNet, sample, emb, context_emb, num_frames: int, copies: int):
    """The first down block's layers, without its downsampler (diffusers' CrossAttnDownBlock3D loop):
    (hidden states, time embedding, skip connections), all with the CFG batch's rows. The shared rows
    become the CFG batch's at the first cross-attention, where the rows start to differ."""
    block = unet.down_blocks[0]
    skips = (_rows(sample, copies),)
    for resnet, temp_conv, attn, temp_attn in zip(block.resnets, block.temp_convs, block.attentions,
                                                  block.temp_attentions):
        sample = resnet(sample, emb)
        sample = temp_conv(sample, num_frames=num_frames)
        sample, emb, copies = _rows(sample, copies), _rows(emb, copies), 1
        sample = attn(sample, encoder_hidden_states=context_emb, return_dict=False)[0]
        sample = temp_attn(sample, num_frames=num_frames, return_dict=False)[0]
        skips += (sample,)
    return sample, emb, skips


def up(block, sample, emb, res_samples, context_emb, upsample_size, num_frames):
    if getattr(block, "has_cross_attention", False):
        return block(hidden_states=sample, temb=emb, res_hidden_states_tuple=res_samples,
                     encoder_hidden_states=context_emb, upsample_size=upsample_size, num_frames=num_frames)
    return block(hidden_states=sample, temb=emb, res_hidden_states_tuple=res_samples, upsample_size=upsample_size,
                 num_frames=num_frames)


def finish(unet: I2VGenXLUNet, sample: torch.Tensor, num_frames: int) -> torch.Tensor:
    sample = unet.conv_out(unet.conv_act(unet.conv_norm_out(sample)))
    return sample[None, :].reshape((-1, num_frames) + sample.shape[1:]).permute(0, 2, 1, 3, 4)


def forward(unet: I2VGenXLUNet, sample, timestep, fps, image_latents, image_embeddings, encoder_hidden_states):
    """diffusers' forward, returning (noise prediction, deep features: the last up block's input)."""
    if not staged_first_block(unet):
        raise ValueError("unet: the staged forward needs a cross-attention first down block")
    forward_upsample_size = any(s % 2**unet.num_upsamplers != 0 for s in sample.shape[-2:])
    sample, emb, context_emb, num_frames, copies = prepare(
        unet, sample, timestep, fps, image_latents, image_embeddings, encoder_hidden_states)
    sample, emb, skips = first_block_layers(unet, sample, emb, context_emb, num_frames, copies)
    down_block_res_samples = skips
    for downsampler in unet.down_blocks[0].downsamplers or ():
        sample = downsampler(sample)
        down_block_res_samples += (sample,)
    for block in unet.down_blocks[1:]:
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
        sample = up(block, sample, emb, res_samples, context_emb, upsample_size, num_frames)
    return finish(unet, sample, num_frames), deep


def staged_first_block(unet: I2VGenXLUNet) -> bool:
    """The published architecture's first down block: cross-attention layers (the staged forward
    unrolls them)."""
    return hasattr(unet.down_blocks[0], "attentions")
