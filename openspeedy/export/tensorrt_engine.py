"""TensorRT engine of the UNet: optimization profile, engine build, and the `tensorrt_plan` model.

One dataclass, ``UNetProfile``, says which batch sizes, frame counts and resolutions the engine
serves; the engine build, the equivalent ``trtexec`` command and the request limits of the entry
models all follow from it. The Triton config is rendered from ``contracts.UNET_EXPORTED`` like every other
config, so the TensorRT model has the PyTorch model's tensor names, dtypes and dims.

TensorRT is imported only to build: everything else here runs (and is tested) without it. An engine
is specific to the GPU model and the TensorRT version that built it (openspeedy/export/README.md).
"""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass
from pathlib import Path

from openspeedy import contracts
from openspeedy.model_config import InstanceGroup, render_config
from openspeedy.request import RequestSettings

PLAN_FILE = "model.plan"
PRECISIONS = ("fp16", "fp8")
# The image docker/Dockerfile builds on (a deploy test keeps them equal): Triton 2.72 with its TensorRT
# backend, TensorRT 10 or later, which the contract's INT64 inputs need.
NGC_IMAGE = "nvcr.io/nvidia/tritonserver:26.08-py3"

Range = tuple[int, int, int]  # min, opt, max

# The profile gives these axes in pixels, as requests do; the graph's are latent pixels.
PIXEL_AXES = ("height", "width")


@dataclass(frozen=True)
class UNetProfile:
    """The shapes one engine serves: (min, opt, max) of each axis that the unet contract lets vary,
    one field per axis, named as in the contract. Kernels are tuned for ``opt``; ``max`` sets the
    activation memory the engine reserves, so keep it no larger than requests need. Heights and widths
    are in pixels (multiples of ``vae_scale_factor``)."""

    batch: Range = (1, 2, 2)  # 2 with classifier-free guidance, 1 without
    frames: Range = (1, 16, 32)
    height: Range = (64, 704, 1280)  # the reference default is 704x1280 (and 1280x704 fits too)
    width: Range = (64, 1280, 1280)
    tokens: Range = (contracts.PROMPT_TOKENS,) * 3  # the text encoder pads every prompt to this length
    vae_scale_factor: int = 8

    def __post_init__(self):
        for name in contracts.UNET_EXPORTED.varying_axes:
            if not hasattr(self, name):
                raise ValueError(f"UNetProfile has no range for the unet contract's axis {name!r}")
            low, opt, high = getattr(self, name)
            if not 1 <= low <= opt <= high:
                raise ValueError(f"UNetProfile.{name} must be 1 <= min <= opt <= max, got {(low, opt, high)}")
        for name in PIXEL_AXES:
            if any(v % self.vae_scale_factor for v in getattr(self, name)):
                raise ValueError(f"UNetProfile.{name} must be multiples of {self.vae_scale_factor} pixels")

    @classmethod
    def covering(cls, settings: RequestSettings, **overrides) -> "UNetProfile":
        """The profile that serves every request ``settings`` admits (tuned for its defaults)."""
        sizes = (settings.min_size, settings.max_size)
        return cls(
            frames=(1, settings.default_num_frames, settings.max_num_frames),
            height=(sizes[0], settings.default_height, sizes[1]),
            width=(sizes[0], settings.default_width, sizes[1]),
            **overrides,
        )

    def dimension_ranges(self) -> dict[str, Range]:
        """(min, opt, max) per varying axis of the unet contract, which names the ONNX graph's dynamic
        dimensions; heights and widths in latent pixels."""
        ranges = {}
        for name in contracts.UNET_EXPORTED.varying_axes:
            values = getattr(self, name)
            ranges[name] = tuple(v // self.vae_scale_factor for v in values) if name in PIXEL_AXES else values
        return ranges

    def restrict(self, settings: RequestSettings) -> RequestSettings:
        """``settings`` narrowed to what the engine serves, so that the entry models refuse a request
        outside the profile with an error naming the input instead of a TensorRT shape error."""
        min_size = max(settings.min_size, self.height[0], self.width[0])
        max_size = min(settings.max_size, self.height[2], self.width[2])
        max_frames = min(settings.max_num_frames, self.frames[2])
        if min_size > max_size:
            raise ValueError(f"the profile {self} admits no size within the request limits {settings}")

        def clamp(value, low, high):
            return max(low, min(value, high))

        return dataclasses.replace(
            settings,
            min_size=min_size,
            max_size=max_size,
            max_num_frames=max_frames,
            default_height=clamp(settings.default_height, min_size, max_size),
            default_width=clamp(settings.default_width, min_size, max_size),
            default_num_frames=clamp(settings.default_num_frames, self.frames[0], max_frames),
        )


def graph_dims(onnx_path: Path) -> dict[str, list[int | str]]:
    """Input dims of an ONNX graph: an int where static, the symbolic name where dynamic."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return {
        value.name: [d.dim_param if d.dim_param else d.dim_value for d in value.type.tensor_type.shape.dim]
        for value in model.graph.input
    }


def profile_shapes(dims: dict[str, list[int | str]], profile: UNetProfile) -> dict[str, tuple[tuple[int, ...], ...]]:
    """(min, opt, max) shapes of every input that has a dynamic dimension, from the graph's dims."""
    ranges = profile.dimension_ranges()
    shapes = {}
    for name, input_dims in dims.items():
        if all(isinstance(d, int) for d in input_dims):
            continue
        unknown = [d for d in input_dims if isinstance(d, str) and d not in ranges]
        if unknown:
            raise ValueError(f"input {name}: dimension {unknown[0]!r} has no range in the profile")
        shapes[name] = tuple(
            tuple(ranges[d][i] if isinstance(d, str) else d for d in input_dims) for i in range(3)
        )
    return shapes


def trtexec_command(onnx_path: Path, plan_path: Path, dims: dict[str, list[int | str]], profile: UNetProfile,
                    precision: str = "fp16") -> str:
    """The ``trtexec`` command that builds the same engine as ``build_engine`` (the CLI alternative)."""
    _check_precision(precision)
    shapes = profile_shapes(dims, profile)

    def flag(which: int) -> str:
        return ",".join(f"{name}:{'x'.join(str(d) for d in shape[which])}" for name, shape in shapes.items())

    words = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={plan_path}", "--fp16"]
    if precision == "fp8":
        words.append("--fp8")
    words += [f"--minShapes={flag(0)}", f"--optShapes={flag(1)}", f"--maxShapes={flag(2)}"]
    return shlex.join(words)


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def require_tensorrt():
    """The ``tensorrt`` module, or a RuntimeError that says where engines can be built."""
    try:
        import tensorrt
    except ImportError as error:
        raise RuntimeError(
            f"TensorRT is not importable here ({error}). Build the engine where it is: in the NGC container "
            f"{NGC_IMAGE} (openspeedy/export/README.md), on the GPU model that will serve it, or with the trtexec "
            "command that `python -m openspeedy.export.tensorrt_engine --print-trtexec ...` prints."
        ) from None
    return tensorrt


def require_modelopt():
    """``modelopt.torch.quantization``, or a RuntimeError: FP8 needs NVIDIA ModelOpt."""
    try:
        import modelopt.torch.quantization as mtq
    except ImportError as error:
        raise RuntimeError(
            f"FP8 engines need NVIDIA ModelOpt ({error}): pip install nvidia-modelopt in the NGC container, "
            "or build the default FP16 engine"
        ) from None
    return mtq


def quantize_fp8(unet, calibration_batches) -> None:
    """Inserts FP8 quantizers into ``unet`` in place (ModelOpt), calibrated on ``calibration_batches``
    (dicts of contract inputs from real prompts and images, on the GPU). Export the result with
    openspeedy/export/onnx_unet.trace_to_onnx and build with ``precision="fp8"``; TensorRT then runs the quantized
    layers in FP8 on GPUs that have it (Hopper and later) and the rest in FP16."""
    mtq = require_modelopt()
    from openspeedy.export.onnx_unet import ContractUNet

    wrapper = ContractUNet(unet)

    def forward_loop(model):
        for batch in calibration_batches:
            wrapper(*(batch[name] for name in contracts.UNET_EXPORTED.input_names))

    mtq.quantize(unet, mtq.FP8_DEFAULT_CFG, forward_loop)


def has_fp8_quantizers(onnx_path: Path) -> bool:
    """Whether the graph carries quantize/dequantize nodes (ModelOpt's FP8 export), which FP8 needs."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return any("QuantizeLinear" in node.op_type for node in model.graph.node)


def build_engine(onnx_path: Path, plan_path: Path, profile: UNetProfile = UNetProfile(), precision: str = "fp16",
                 workspace_bytes: int | None = None) -> Path:
    """Builds the engine of ``onnx_path`` with the TensorRT Python API and writes it to ``plan_path``."""
    _check_precision(precision)
    if precision == "fp8" and not has_fp8_quantizers(onnx_path):
        raise ValueError(f"{onnx_path} has no quantizers: FP8 needs a graph quantized with quantize_fp8 (ModelOpt)")
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # TensorRT 10 networks are always explicit-batch (the flag is gone from 10.x's enum on some builds).
    flag = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    network = builder.create_network(0 if flag is None else 1 << int(flag))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # by path: finds the external data beside it
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
    _check_network(trt, network)

    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    if precision == "fp8":
        config.set_flag(trt.BuilderFlag.FP8)
    if workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    optimization_profile = builder.create_optimization_profile()
    for name, (low, opt, high) in profile_shapes(graph_dims(onnx_path), profile).items():
        optimization_profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(optimization_profile)

    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see its log above)")
    plan_path = Path(plan_path)
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(engine))
    return plan_path


def _check_network(trt, network) -> None:
    """The parsed network has the contract's tensors and dtypes (TensorRT < 10 would turn INT64 into INT32,
    which the Triton config would then contradict)."""
    dtypes = {"FP32": trt.float32, "INT64": getattr(trt, "int64", None)}
    tensors = [network.get_input(i) for i in range(network.num_inputs)]
    tensors += [network.get_output(i) for i in range(network.num_outputs)]
    found = {tensor.name: tensor.dtype for tensor in tensors}
    for spec in (*contracts.UNET_EXPORTED.inputs, *contracts.UNET_EXPORTED.outputs):
        if found.get(spec.name) != dtypes[spec.datatype]:
            raise RuntimeError(f"TensorRT network tensor {spec.name} is {found.get(spec.name)}, the contract says "
                               f"{spec.datatype} (INT64 inputs need TensorRT 10 or later)")


def tensorrt_config(instance_group: InstanceGroup, name: str | None = None) -> str:
    """The ``tensorrt_plan`` config.pbtxt of the `unet` model: the contract's tensors, GPU instances."""
    if instance_group.kind != "KIND_GPU":
        raise ValueError("a TensorRT engine runs on GPUs: export with --device gpu")
    return render_config(contracts.UNET_EXPORTED, backend="tensorrt_plan", instance_group=instance_group, name=name)


def add_profile_arguments(parser) -> None:
    """One ``--profile-<axis> MIN,OPT,MAX`` option per varying axis of the unet contract (defaults:
    ``UNetProfile``'s)."""
    defaults = UNetProfile()
    for name in contracts.UNET_EXPORTED.varying_axes:
        default = ",".join(str(v) for v in getattr(defaults, name))
        parser.add_argument(f"--profile-{name}", default=default, metavar="MIN,OPT,MAX",
                            help=f"TensorRT profile: {name} (default {default})")


def profile_from_arguments(args) -> UNetProfile:
    ranges = {}
    for name in contracts.UNET_EXPORTED.varying_axes:
        values = tuple(int(v) for v in getattr(args, f"profile_{name}").split(","))
        if len(values) != 3:
            raise ValueError(f"--profile-{name} takes MIN,OPT,MAX, got {values}")
        ranges[name] = values
    return UNetProfile(**ranges)


def main(argv: list[str] | None = None) -> None:
    """Builds an engine from an exported ONNX graph, or prints the equivalent trtexec command."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m openspeedy.export.tensorrt_engine", description=main.__doc__)
    parser.add_argument("--onnx", type=Path, required=True, help="unet ONNX graph (openspeedy/export/onnx_unet.py)")
    parser.add_argument("--plan", type=Path, required=True, help="engine to write, e.g. models/unet/1/model.plan")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp16",
                        help="fp8 needs a graph quantized with quantize_fp8 (NVIDIA ModelOpt)")
    parser.add_argument("--print-trtexec", action="store_true", help="print the trtexec command and stop")
    add_profile_arguments(parser)
    args = parser.parse_args(argv)
    profile = profile_from_arguments(args)
    if args.print_trtexec:
        print(trtexec_command(args.onnx, args.plan, graph_dims(args.onnx), profile, args.precision))
        return
    try:
        print(build_engine(args.onnx, args.plan, profile, args.precision))
    except (RuntimeError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
