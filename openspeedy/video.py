"""Video files from uint8 frames: H.264 MP4 through imageio's ffmpeg plugin, GIF through Pillow."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np


def encode_mp4(frames: np.ndarray, fps: int) -> bytes:
    """[F, H, W, 3] uint8 to H.264 MP4 bytes (yuv420p, playable everywhere; needs even sizes, which
    the contract's multiples of 8 guarantee)."""
    return iio.imwrite(
        "<bytes>",
        np.ascontiguousarray(frames),
        extension=".mp4",
        plugin="FFMPEG",
        fps=fps,
        codec="libx264",
        pixelformat="yuv420p",
        macro_block_size=2,  # never rescale: the frames are exactly the size the client asked for
    )


def encode_gif(frames: np.ndarray, fps: int) -> bytes:
    return iio.imwrite("<bytes>", np.ascontiguousarray(frames), extension=".gif", plugin="pillow",
                       duration=1000 / fps, loop=0)


def decode_video(data: bytes, extension: str = ".mp4") -> np.ndarray:
    """All frames of a video file as [F, H, W, 3] uint8."""
    plugin = "FFMPEG" if extension == ".mp4" else "pillow"
    frames = iio.imread(data, extension=extension, plugin=plugin, index=None)
    return np.asarray(frames)[..., :3]
