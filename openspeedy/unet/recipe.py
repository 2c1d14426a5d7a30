"""The order the PyTorch UNet applies its techniques in: one list of (name, apply) steps, the order of
UNetOptions' fields (openspeedy/unet/options.py).

Each step changes the runtime (openspeedy/unet/runtime.py) in place and says what it did, with a count:
attentions fused or replaced, modules swapped, weights converted, paths compiled or graphed. A technique
asked for that cannot run here (no CUDA, a GPU older than Hopper, QuACK or torchao missing) is skipped,
and the report says why: the model then computes as diffusers does (FP8 skipped stays 16-bit, the more
exact result). One whose requirement the model itself lacks (share_cfg_rows on another architecture)
is an error. The runtime logs the report at load (logger ``openspeedy.unet``) and keeps it as
``recipe_report`` for the benchmarks' results.

The module steps come first, in an order that matters: the temporal attention processors after
fuse_qkv (which resets the processors), the layouts after the 2D temporal convolutions they wrap, FP8
last (it swaps the linear layers the others leave). Inductor's settings are gathered before
compile_mode compiles with them, and the CUDA graphs capture what was compiled.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from openspeedy import contracts
from openspeedy.compilation import compiler, parse_inductor_options
from openspeedy.cuda_graphs import GraphedCallable
from openspeedy.unet import fp8, fused_geglu, fused_residuals, layout, share_cfg_rows
from openspeedy.unet.options import UNetOptions
from openspeedy.unet.temporal_attention import use_temporal_attention

if TYPE_CHECKING:
    from openspeedy.unet.runtime import UNet

log = logging.getLogger("openspeedy.unet")


OFF = "off in these options"


class Skipped(Exception):
    """A technique these options ask for that cannot run here; the message says why."""


# What a step returns: what it did ("12 attentions fused"), or a function that says it later (what a
# compiler pass does is known once the graphs are compiled, at warm-up).
Detail = str | Callable[[], str]


def _fuse_qkv(unet: UNet) -> Detail:
    unet.model.fuse_qkv_projections()  # one matrix product for Q, K and V where they share an input
    return f"{sum(bool(getattr(m, 'fused_projections', False)) for m in unet.model.modules())} attentions fused"


def _temporal_attention(unet: UNet) -> Detail:
    return f"{use_temporal_attention(unet.model)} temporal attentions given the kernel's processor"


def _fused_geglu(unet: UNet) -> Detail:
    reason = fused_geglu.kernel_unavailable(unet.device, unet.dtype)
    if reason is not None:
        raise Skipped(f"{reason}; diffusers' GEGLU runs")
    return f"{fused_geglu.use_fused_geglu(unet.model)} GEGLUs swapped"


def _temporal_conv2d(unet: UNet) -> Detail:
    return f"{layout.temporal_conv2d(unet.model)} temporal Conv3d as 2D convolutions"


def _channels_last(unet: UNet) -> Detail:
    return f"{layout.channels_last(unet.model)} convolution weights converted"


def _channels_last_joins(unet: UNet) -> Detail:
    return f"{layout.channels_last_joins(unet.model)} up block resnets wrapped"


def _channels_last_temporal_convs(unet: UNet) -> Detail:
    return f"{layout.channels_last_temporal_convs(unet.model)} temporal convolutions wrapped"


def _fp8(unet: UNet) -> Detail:
    reason = fp8.fp8_unavailable(unet.device, unet.dtype)
    if reason is not None:
        raise Skipped(reason)
    return f"{fp8.quantize_linears(unet.model)} linear layers quantized to FP8 (row-wise scales)"


def _share_cfg_rows(unet: UNet) -> Detail:
    if not share_cfg_rows.supported(unet.eager_model):
        raise ValueError("unet: share_cfg_rows needs a cross-attention first down block (the published one)")
    unet.row_sharing = share_cfg_rows.RowSharing()
    unet.inner["plain"] = unet.staged_plain  # the plain path is then the staged forward too
    return f"{len(contracts.UNET_CFG_SHARED_INPUTS)} inputs sent with one row where a pair shares them"


def _inductor_options(unet: UNet) -> Detail:
    settings = parse_inductor_options(unet.options.inductor_options)
    unet.inductor_settings |= settings
    return f"{len(settings)} Inductor settings: {unet.options.inductor_options}"


def _fused_residuals(unet: UNet) -> Detail:
    settings = fused_residuals.fused_residual_settings(unet.device, unet.dtype)
    if not settings:
        raise Skipped(f"{fused_residuals.kernel_unavailable(unet.device, unet.dtype)}; the additions stay Inductor's")
    unet.inductor_settings |= settings
    graph_pass = settings["post_grad_custom_pre_pass"]
    return lambda: f"{graph_pass.fused} residual additions fused in the graphs compiled so far"


def _compile_mode(unet: UNet) -> Detail:
    compile = compiler(unet.options.compile_mode, unet.inductor_settings)
    staged = ["full", "shallow"] + (["plain"] if unet.row_sharing else [])
    if not unet.row_sharing:  # diffusers' forward, which the plain path calls
        unet.model = compile(unet.model)
    unet.inner |= {name: compile(unet.inner[name]) for name in staged}
    return f"{len(unet.inner)} forward paths, mode {unet.options.compile_mode}"


def _cuda_graphs(unet: UNet) -> Detail:
    if unet.device.type != "cuda":
        raise Skipped(f"CUDA graphs need a CUDA device, this UNet runs on {unet.device.type}")
    # Each path graphs its own shapes (up to max_cuda_graphs each); later shapes run without a graph.
    unet.paths = {name: GraphedCallable(fn, max_graphs=unet.options.max_cuda_graphs) for name, fn in unet.paths.items()}
    return f"{len(unet.paths)} forward paths, up to {unet.options.max_cuda_graphs} shapes each"


# Every technique of UNetOptions, in its field order (tests/unit/unet/test_recipe.py holds them equal).
STEPS: tuple[tuple[str, Callable[["UNet"], Detail]], ...] = (
    ("fuse_qkv", _fuse_qkv),
    ("temporal_attention", _temporal_attention),
    ("fused_geglu", _fused_geglu),
    ("temporal_conv2d", _temporal_conv2d),
    ("channels_last", _channels_last),
    ("channels_last_joins", _channels_last_joins),
    ("channels_last_temporal_convs", _channels_last_temporal_convs),
    ("fp8", _fp8),
    ("share_cfg_rows", _share_cfg_rows),
    ("inductor_options", _inductor_options),
    ("fused_residuals", _fused_residuals),
    ("compile_mode", _compile_mode),
    ("cuda_graphs", _cuda_graphs),
)


@dataclass(frozen=True)
class Outcome:
    """One technique's line of the report."""

    name: str
    detail: Detail | None = None  # what it did, where applied
    skipped: str | None = None  # why not, where not

    def line(self) -> str:
        if self.skipped is not None:
            return f"{self.name}: skipped: {self.skipped}"
        return f"{self.name}: applied ({self.detail() if callable(self.detail) else self.detail})"


def apply(unet: UNet, options: UNetOptions) -> list[Outcome]:
    """Runs every step on ``unet`` in order: those ``options`` turn on, the others reported as off."""
    outcomes = []
    for name, step in STEPS:
        if not getattr(options, name):
            outcomes.append(Outcome(name, skipped=OFF))
            continue
        try:
            outcomes.append(Outcome(name, detail=step(unet)))
        except Skipped as reason:
            outcomes.append(Outcome(name, skipped=str(reason)))
    return outcomes


def log_report(outcomes: list[Outcome]) -> None:
    """One line a technique; a warning for one asked for and skipped (the model runs slower than asked)."""
    for outcome in outcomes:
        asked_but_skipped = outcome.skipped not in (None, OFF)
        log.log(logging.WARNING if asked_but_skipped else logging.INFO, "unet: %s", outcome.line())
