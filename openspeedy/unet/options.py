"""The PyTorch UNet's speed techniques, one typed field each, in the order the runtime applies them.

``UNetOptions`` is what the `unet` model's config ``parameters`` say (strings, as Triton keeps them):
``from_parameters`` reads them, refusing a key it does not know (a misspelt key would otherwise turn a
technique off without a word), and ``as_parameters`` writes them back. A technique that needs another
(``needs`` in its field's metadata) is refused without it; it may still come first in the order, as
Inductor's settings come before the compile that uses them. A technique that cannot share the model with
another (``excludes``) is refused beside it. Each technique has one name: the field,
the line the runtime logs for it (openspeedy/unet/recipe.py) and the module that implements it.

Presets: ``EAGER`` (diffusers as it is), ``COMPILE`` (what diffusers' speed guide gives in two lines:
fused QKV and torch.compile's default mode), ``FAST`` (every lossless technique: what export serves on
GPUs) and ``FP8``: ``FAST`` plus FP8 matrix products for the linear layers, less the fused GEGLU that
would run one of them in 16-bit (lossy: never a default; export serves it only when asked).
``parse`` reads the command-line spelling: a preset, then edits separated by commas,
``-name`` to turn a technique off (``FAST.without``), ``+name`` to turn it on, ``+name=value`` to set
it: ``fast,-fused_residuals`` or ``fast,+inductor_options=triton.enable_pdl=true``. A value holds no
comma of its own, so an item without a sign continues the value before it:
``fast,+inductor_options=coordinate_descent_tuning=true,conv_1x1_as_mm=true``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Mapping

from openspeedy.component_limits import ComponentLimits
from openspeedy.model_parameters import RELOAD_PARAMETER

# What serves the `unet` model (export's ``--unet-runtime``): the diffusers weights on PyTorch (these
# options), the exported ONNX graph on onnxruntime, or a TensorRT engine.
RUNTIMES = ("torch", "onnxruntime", "tensorrt")

COMPILE_MODES = ("", "default", "max-autotune", "max-autotune-no-cudagraphs", "reduce-overhead")

# The `unet` config's other parameters, which are not the runtime's options: read by the loader
# (dtype, runtime: openspeedy.components.load_component), the Triton python backend
# (FORCE_CPU_ONLY_INPUT_TENSORS), the warm-up and the compile caches (shared with the VAE models), and
# every component's input limits (openspeedy/component_limits.py).
OTHER_PARAMETERS = ("dtype", "runtime", "warmup_shapes", "compile_cache_dir", "FORCE_CPU_ONLY_INPUT_TENSORS",
                    RELOAD_PARAMETER,
                    *ComponentLimits().as_parameters())

_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off", "")


def _technique(module: str, does: str, needs: tuple[str, ...] = (), excludes: tuple[str, ...] = (), default=False):
    """A field of UNetOptions: ``module`` implements it, ``does`` says what it does (docs table),
    ``needs`` names the fields it cannot run without, ``excludes`` those it cannot run beside."""
    return field(default=default, metadata={"module": module, "does": does, "needs": needs, "excludes": excludes,
                                            "technique": True})


def _setting(module: str, does: str, default):
    """A field that tunes techniques (not one itself: not logged, not ablated)."""
    return field(default=default, metadata={"module": module, "does": does, "needs": (), "excludes": (),
                                            "technique": False})


@dataclass(frozen=True)
class UNetOptions:
    fuse_qkv: bool = _technique(
        "diffusers (fuse_qkv_projections)",
        "one matrix product for Q, K and V where they share an input")
    temporal_attention: bool = _technique(
        "openspeedy/unet/temporal_attention.py",
        "the temporal transformers' self-attention over frames as one Triton kernel (GPU; SDPA elsewhere)")
    fused_geglu: bool = _technique(
        "openspeedy/unet/fused_geglu.py",
        "the feed-forward's GEGLU inside its matrix product (QuACK, Hopper and newer, 16-bit)")
    temporal_conv2d: bool = _technique(
        "openspeedy/unet/layout.py",
        "the (3, 1, 1) temporal Conv3d as the same arithmetic in 2D, which joins the channels-last graph")
    channels_last: bool = _technique(
        "openspeedy/unet/layout.py",
        "convolution weights channels-last once at load, not copied into that layout in every call")
    channels_last_joins: bool = _technique(
        "openspeedy/unet/layout.py",
        "the up blocks' joins of the path and its skip connections written channels-last")
    channels_last_temporal_convs: bool = _technique(
        "openspeedy/unet/layout.py",
        "the temporal convolutions' inputs written channels-last", needs=("temporal_conv2d",))
    fp8: bool = _technique(
        "openspeedy/unet/fp8.py",
        "linear layers as FP8 (e4m3) matrix products with dynamic per-row scales, through torchao (lossy; "
        "bfloat16, compute capability 8.9+)",
        # The fused GEGLU computes the feed-forward's first linear layer in its own 16-bit kernel.
        excludes=("fused_geglu",))
    share_cfg_rows: bool = _technique(
        "openspeedy/unet/share_cfg_rows.py",
        "a CFG pair's layers before the first cross-attention computed once where its rows share the sample")
    inductor_options: str = _technique(
        "openspeedy/compilation.py",
        "Inductor settings NAME=VALUE joined by commas, over the mode's", needs=("compile_mode",), default="")
    fused_residuals: bool = _technique(
        "openspeedy/unet/fused_residuals.py",
        "the transformer blocks' residual additions inside the matrix products before them (an Inductor "
        "pass; QuACK, Hopper and newer, 16-bit)", needs=("compile_mode",))
    compile_mode: str = _technique(
        "openspeedy/compilation.py",
        "torch.compile in this mode (static shapes); empty: eager", default="")
    cuda_graphs: bool = _technique(
        "openspeedy/cuda_graphs.py",
        "the whole forward replayed as one CUDA graph per input shape (CUDA)")
    max_cuda_graphs: int = _setting(
        "openspeedy/cuda_graphs.py",
        "shapes each path keeps a CUDA graph for; later shapes run without one", 4)
    feature_reuse: bool = _setting(
        "openspeedy/unet/feature_reuse.py",
        "warm-up also compiles the two paths of FEATURE_REUSE_INTERVAL", False)

    def __post_init__(self):
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if not isinstance(value, _python_type(item)) or (item.type == "int" and isinstance(value, bool)):
                raise TypeError(f"unet option {item.name} takes a {item.type}, got {value!r}")
            for needed in item.metadata["needs"]:
                if value and not getattr(self, needed):
                    raise ValueError(f"unet option {item.name} needs {needed} (see openspeedy/unet/options.py)")
            for excluded in item.metadata["excludes"]:
                if value and getattr(self, excluded):
                    raise ValueError(f"unet option {item.name} excludes {excluded}: both change the same layers; "
                                     f"turn one off (see openspeedy/unet/options.py)")
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"unet option compile_mode must be one of {COMPILE_MODES}, got {self.compile_mode!r}")
        if self.cuda_graphs and self.compile_mode == "reduce-overhead":
            raise ValueError("unet option cuda_graphs with compile_mode reduce-overhead: that mode graphs the "
                             "kernels itself, and a whole-forward capture cannot hold its graphs; choose one")
        if self.max_cuda_graphs < 1:
            raise ValueError(f"unet option max_cuda_graphs must be 1 or more, got {self.max_cuda_graphs}")
        if self.inductor_options:
            from openspeedy.compilation import parse_inductor_options

            parse_inductor_options(self.inductor_options)  # a setting Inductor lacks fails here, not at a call

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, str]) -> "UNetOptions":
        """The options a `unet` config's parameters set (others keep their defaults). A key that is
        neither an option nor one of OTHER_PARAMETERS is a ValueError naming it."""
        known = {item.name: item for item in dataclasses.fields(cls)}
        values = {}
        for key, text in parameters.items():
            if key in known:
                values[key] = _parse_value(known[key], text)
            elif key not in OTHER_PARAMETERS:
                raise ValueError(f"unet: unknown parameter {key!r}; the options are {', '.join(known)} "
                                 f"and the other parameters {', '.join(OTHER_PARAMETERS)}")
        return cls(**values)

    def as_parameters(self) -> dict[str, str]:
        """The config parameters that set these options: those that differ from the defaults."""
        parameters = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if value != item.default:
                parameters[item.name] = ("true" if value else "false") if isinstance(value, bool) else str(value)
        return parameters

    @property
    def techniques_on(self) -> tuple[str, ...]:
        """The techniques these options turn on, in the order applied."""
        return tuple(item.name for item in dataclasses.fields(self)
                     if item.metadata["technique"] and getattr(self, item.name))

    def without(self, name: str) -> "UNetOptions":
        """These options with technique ``name`` off, and with it every technique that needs it (say
        ``FAST.without("compile_mode")`` also turns inductor_options and fused_residuals off): an
        ablation row measures the technique with all it carries."""
        return UNetOptions(**_turn_off(dataclasses.asdict(self), name))

    def spelling(self) -> str:
        """The shortest ``parse`` spelling of these options from a preset: ``fast``, ``fast,-fused_residuals``."""
        candidates = []
        for preset_name, preset in PRESETS.items():
            edits = []
            for item in dataclasses.fields(self):
                value, base = getattr(self, item.name), getattr(preset, item.name)
                if value == base:
                    continue
                if isinstance(value, bool):
                    edits.append(("+" if value else "-") + item.name)
                elif value == item.default:
                    edits.append("-" + item.name)
                else:
                    edits.append(f"+{item.name}={value}")
            candidates.append((len(edits), ",".join([preset_name, *edits])))
        return min(candidates)[1]


def _python_type(item: dataclasses.Field) -> type:
    return {"bool": bool, "str": str, "int": int}[item.type]


def _field(name: str) -> dataclasses.Field:
    fields = {item.name: item for item in dataclasses.fields(UNetOptions)}
    if name not in fields:
        raise ValueError(f"unet: unknown option {name!r}; the options are {', '.join(fields)}")
    return fields[name]


def _turn_off(values: dict, name: str) -> dict:
    """``values`` (UNetOptions fields) with ``name`` at its default, and every technique that needs it."""
    values = dict(values)
    pending = [_field(name).name]
    while pending:
        current = pending.pop()
        values[current] = _field(current).default
        pending += [item.name for item in dataclasses.fields(UNetOptions)
                    if current in item.metadata["needs"] and values[item.name]]
    return values


def _parse_value(item: dataclasses.Field, text: str):
    if item.type == "bool":
        if text.strip().lower() not in _TRUE + _FALSE:
            raise ValueError(f"unet option {item.name} takes true or false, got {text!r}")
        return text.strip().lower() in _TRUE
    if item.type == "int":
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"unet option {item.name} takes an integer, got {text!r}") from None
    return text.strip()


EAGER = UNetOptions()
COMPILE = UNetOptions(fuse_qkv=True, compile_mode="default")
FAST = UNetOptions(
    fuse_qkv=True, temporal_attention=True, fused_geglu=True, temporal_conv2d=True, channels_last=True,
    channels_last_joins=True, channels_last_temporal_convs=True, share_cfg_rows=True, compile_mode="default",
    fused_residuals=True, cuda_graphs=True,
)
FP8 = dataclasses.replace(FAST, fused_geglu=False, fp8=True)
PRESETS: dict[str, UNetOptions] = {"eager": EAGER, "compile": COMPILE, "fast": FAST, "fp8": FP8}


def parse(spelling: str) -> UNetOptions:
    """``fast``, ``fast,-fused_residuals``, ``eager,+fuse_qkv``, ``fast,+inductor_options=A=true,B=1``:
    a preset, then edits in order (see the module docstring). Unknown names are a ValueError naming them."""
    items = [item.strip() for item in spelling.split(",")]
    preset, edits = items[0], items[1:]
    if preset not in PRESETS:
        raise ValueError(f"unet options {spelling!r}: start with a preset, one of {', '.join(PRESETS)}; "
                         f"got {preset!r}")
    # Items without a sign continue the value before them (values may hold commas).
    joined: list[str] = []
    for edit in edits:
        if edit[:1] in ("+", "-") or not joined:
            joined.append(edit)
        else:
            joined[-1] += "," + edit
    values = dataclasses.asdict(PRESETS[preset])
    for edit in joined:
        sign = edit[:1]
        if sign not in ("+", "-"):
            raise ValueError(f"unet options {spelling!r}: {edit!r} is not +NAME, +NAME=VALUE or -NAME")
        name, _, value = edit[1:].partition("=")
        item = _field(name.strip())
        if sign == "-":
            if value:
                raise ValueError(f"unet options {spelling!r}: -{name} takes no value")
            values = _turn_off(values, item.name)
        else:
            if not value and item.type != "bool":
                raise ValueError(f"unet options {spelling!r}: +{name} needs a value, +{name}=VALUE")
            values[item.name] = _parse_value(item, value) if value else True
    return UNetOptions(**values)  # checked once every edit is made: an edit may need a later one


def markdown_table() -> str:
    """The options as a markdown table (name, module, what it does), in the order applied: for the docs."""
    rows = ["| option | module | what it does |", "|---|---|---|"]
    for item in dataclasses.fields(UNetOptions):
        needs = f" Needs {', '.join(f'`{n}`' for n in item.metadata['needs'])}." if item.metadata["needs"] else ""
        excludes = "".join(f" Not with `{name}`." for name in item.metadata["excludes"])
        rows.append(f"| `{item.name}` | `{item.metadata['module']}` | {item.metadata['does']}.{needs}{excludes} |")
    return "\n".join(rows) + "\n"
