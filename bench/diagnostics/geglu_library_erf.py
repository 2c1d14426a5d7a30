"""The GEGLU epilogue with the CuTe DSL's own erf (``quack.activation.gelu_erf``), the kernel's GELU before
openspeedy/unet/fused_geglu_kernel.py had its own: bench/diagnostics/geglu_probe.py times the two side by side.
It imports QuACK, so the probe imports it only on a GPU where the kernel runs."""

from quack.activation import gelu_erf
from quack.epilogue.frontend import gemm_epilogue, unpack
from quack.epilogue.ops import RowVecLoad


@gemm_epilogue(outputs=("postact",), mode="acc_pair", ops={"bias": RowVecLoad("bias")})
def library_erf_epilogue(acc, bias):
    gate, value = unpack(acc + bias)
    return {"postact": gelu_erf(gate) * value}
