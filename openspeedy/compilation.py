"""How the components call torch.compile: one place for the mode, the static shapes, Inductor's settings
and the on-disk caches, so the UNet and the VAE encoder and decoder compile alike."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Iterator, Mapping

import torch

from openspeedy import compile_artifacts

log = logging.getLogger("openspeedy.compile")


def use_compile_cache(options: Mapping[str, str]) -> None:
    """Inductor's, Triton's and QuACK's on-disk caches in the directory that the config parameter
    ``compile_cache_dir`` names (a volume; none where it is not set), so a restart reuses the kernels
    compiled, and QuACK's GEMM configurations tuned, before it. Set outright: torch writes its
    default into TORCHINDUCTOR_CACHE_DIR the first time it looks the variable up, so a default-respecting
    setdefault here would often find it taken (seen on the GPU machine: the caches went to /tmp). QuACK
    reads its variables when it is first imported, so this runs before that."""
    if not options.get("compile_cache_dir"):
        return
    directory = Path(options["compile_cache_dir"])
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(directory)
    os.environ["TRITON_CACHE_DIR"] = str(directory / "triton")
    os.environ["QUACK_CACHE_DIR"] = str(directory / "quack")
    os.environ["QUACK_CACHE_AUTOTUNING"] = "1"  # QuACK keeps its tuning results only when asked


@contextlib.contextmanager
def compiling(model: str, parameters: Mapping[str, str], directory: Path, device: torch.device,
              compiles: bool) -> Iterator[None]:
    """Around a model's load and warm-up: its on-disk compile caches (use_compile_cache) and, where it
    ``compiles``, the artifacts that export compiled for it (openspeedy.compile_artifacts, in its version
    ``directory``) loaded before it compiles anything; then one log line says how many graphs the
    warm-up compiled and how many came from the caches, so a slow start says why."""
    use_compile_cache(parameters)
    if not compiles:
        yield
        return
    log.info("%s: %s", model, compile_artifacts.load(directory, device))
    before = compile_artifacts.compile_counts()
    yield
    now = compile_artifacts.compile_counts()
    compiled, cached = (now[key] - before[key] for key in ("compiled", "from_cache"))
    log.info("%s: warm-up compiled %d graphs, %d came from the compile caches", model, compiled, cached)


def compiler(compile_mode: str, inductor_options: Mapping[str, object]):
    """torch.compile in ``compile_mode`` with static shapes (each configured shape compiles once, at
    warm-up, and CUDA graphs need them), Inductor's settings overridden by ``inductor_options``.
    torch.compile takes a mode or options, not both, so a mode joins the options as the settings it stands for."""
    mode = None if compile_mode == "default" else compile_mode
    if not inductor_options:
        return lambda fn: torch.compile(fn, mode=mode, dynamic=False)
    settings = torch._inductor.list_mode_options(compile_mode) | dict(inductor_options)
    return lambda fn: torch.compile(fn, options=settings, dynamic=False)


def parse_inductor_options(text: str) -> dict[str, bool | int]:
    """ "coordinate_descent_tuning=true,conv_1x1_as_mm=true" -> Inductor settings (torch._inductor.config
    names, true/false or integers); a name Inductor does not know is an error here, not at the first call."""
    import torch._inductor.config as inductor_config

    settings: dict[str, bool | int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip().lower()
        if not sep or not value:
            raise ValueError(f"unet: inductor_options entries are NAME=VALUE, got {item!r}")
        if not hasattr(inductor_config, name):
            raise ValueError(f"unet: inductor_options: Inductor has no setting {name!r}")
        if value in ("true", "false"):
            settings[name] = value == "true"
        elif value.lstrip("-").isdigit():
            settings[name] = int(value)
        else:
            raise ValueError(f"unet: inductor_options: {name} takes true, false or an integer, got {value!r}")
    return settings
