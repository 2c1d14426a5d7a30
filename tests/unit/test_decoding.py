"""Chunked VAE decoding: every chunk size gives the frames of an all-at-once decode; the budget holds."""

import pytest
import torch

from openspeedy.components import load_component
from openspeedy.decoding import ChunkedDecoder, DecodeCost, DecodeOutOfMemory


@pytest.fixture(scope="module")
def vae_decoder(tiny_checkpoint):
    return load_component("vae_decoder", tiny_checkpoint).decoder


@pytest.fixture(scope="module")
def latents():
    return torch.randn(10, 4, 8, 12, generator=torch.Generator().manual_seed(0))


def test_every_chunk_size_matches_all_at_once(vae_decoder, latents):
    # Tolerance: at most one uint8 step. The VAE decodes frames independently, but float32 kernels
    # may round differently with the batch size; observed here: identical.
    reference = vae_decoder.decode(latents, chunk_size=latents.shape[0])
    assert reference.shape == (10, 64, 96, 3) and reference.dtype == torch.uint8
    for chunk in (1, 2, 5, 3, 7, 10, 64, 0):  # one, divisors, non-divisors, all, more than all, automatic
        frames = vae_decoder.decode(latents, chunk_size=chunk)
        difference = (frames.int() - reference.int()).abs().max().item()
        assert difference <= 1, f"chunk {chunk}: max difference {difference}"


def test_automatic_chunk_is_the_largest_that_fits_the_budget(vae_decoder, latents):
    shape = tuple(latents.shape)
    cost = vae_decoder.cost(shape)
    assert cost.per_frame > 0
    for frames_that_fit in (1, 3, 4, 9):
        planned = cost.fixed + frames_that_fit * cost.per_frame + cost.per_frame // 2
        vae_decoder.memory_budget_bytes = int(planned / 0.95)  # the decoder keeps 5% of the budget unused
        assert vae_decoder.automatic_chunk(shape) == frames_that_fit
    vae_decoder.memory_budget_bytes = 1  # not even one frame fits: still decode, one at a time
    assert vae_decoder.automatic_chunk(shape) == 1
    vae_decoder.memory_budget_bytes = 1 << 40
    assert vae_decoder.automatic_chunk(shape) == shape[0]


def test_automatic_plan_decodes_in_equal_chunks(vae_decoder, latents, monkeypatch):
    seen = []
    decode_chunk = vae_decoder.decode_chunk
    monkeypatch.setattr(vae_decoder, "decode_chunk", lambda part: seen.append(part.shape[0]) or decode_chunk(part))
    monkeypatch.setattr(vae_decoder, "automatic_chunk", lambda shape: 9)  # 10 frames, at most 9 at a time
    vae_decoder.decode(latents, chunk_size=0)
    assert seen == [5, 5]  # not 9 and 1
    seen.clear()
    vae_decoder.decode(latents, chunk_size=9)  # an explicit chunk is honoured as it is
    assert seen == [9, 1]


def test_compiled_decoder_gives_the_eager_frames(tiny_checkpoint, vae_decoder, latents):
    compiled = load_component("vae_decoder", tiny_checkpoint, options={"compile_mode": "default"}).decoder
    assert compiled._compiled_decoder is not None and vae_decoder._compiled_decoder is None
    for chunk in (0, 4):  # the automatic plan (one chunk of 10) and chunks of 4, 4 and 2: three compiled shapes
        frames, reference = compiled.decode(latents, chunk), vae_decoder.decode(latents, chunk)
        assert frames.shape == reference.shape and frames.dtype == torch.uint8
        assert (frames.int() - reference.int()).abs().max().item() <= 1, f"chunk {chunk}"


def test_decode_cost_arithmetic():
    assert DecodeCost(fixed=100, per_frame=50).frames_within(360) == 5
    assert DecodeCost(fixed=100, per_frame=50).frames_within(50) == 0


class FlakyVae:
    """Runs out of memory on any chunk larger than ``limit`` frames, like a full card would."""

    def __init__(self, vae, limit):
        self.vae, self.limit, self.chunks = vae, limit, []
        self.config = vae.config

    def decode(self, latents):
        self.chunks.append(latents.shape[0])
        if latents.shape[0] > self.limit:
            raise torch.OutOfMemoryError("simulated")
        return self.vae.decode(latents)


def test_automatic_decode_halves_its_chunk_on_out_of_memory(vae_decoder, latents):
    flaky = FlakyVae(vae_decoder.vae, limit=3)
    decoder = ChunkedDecoder(flaky, vae_decoder.device, vae_decoder.dtype, 1 << 40, 1 << 40)
    frames = decoder.decode(latents, chunk_size=0)
    assert frames.shape[0] == 10
    assert flaky.chunks[:3] == [10, 5, 2]  # all frames, then halves until one fits


def test_explicit_chunk_that_does_not_fit_is_a_clear_error(vae_decoder, latents):
    decoder = ChunkedDecoder(FlakyVae(vae_decoder.vae, limit=3), vae_decoder.device, vae_decoder.dtype, 1 << 40,
                             1 << 40)
    with pytest.raises(DecodeOutOfMemory, match="DECODE_CHUNK_SIZE"):
        decoder.decode(latents, chunk_size=4)


def test_large_frames_decode_in_tiles(tiny_checkpoint):
    decoder = load_component("vae_decoder", tiny_checkpoint, options={"tile_above_pixels": str(64 * 64)}).decoder
    latents = torch.randn(2, 4, 8, 16)  # 64x128 pixels: above the threshold
    frames = decoder.decode(latents)
    assert decoder.vae.use_tiling and frames.shape == (2, 64, 128, 3)
    decoder.decode(torch.randn(2, 4, 8, 8))  # 64x64: not above it
    assert not decoder.vae.use_tiling
