"""QuACK's GEMM with the GEGLU in its epilogue. It imports QuACK, so only openspeedy/unet/fused_geglu.py (and the
GPU probe bench/diagnostics/geglu_probe.py) imports it, and only where the kernel can run."""

import math

import cutlass.cute as cute
from cutlass._mlir_helpers import math as mlir_math
from quack.activation import relu
from quack.epilogue.frontend import gemm_epilogue, unpack
from quack.epilogue.ops import RowVecLoad

# Abramowitz and Stegun 7.1.26: erfc(z) = t * P(t) * exp(-z^2) with t = 1 / (1 + p z), for z >= 0,
# within 1.5e-7 of the true value. Here z = |x| / sqrt(2) and the tail probability erfc(z) / 2 is
# wanted, so p takes the 1/sqrt(2) and the coefficients the 1/2.
_TAIL_P = 0.3275911 / math.sqrt(2.0)
_TAIL_COEFFICIENTS = tuple(0.5 * a for a in (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429))
_MINUS_HALF_LOG2_E = -0.5 * math.log2(math.e)  # exp(-x^2 / 2) = exp2(x^2 * this)


def gelu_exact(x):
    """GELU as diffusers computes it, x * Phi(x) with the normal distribution's exact Phi (erf, not the
    tanh approximation), to float32 precision: the formula is within 3.4e-7 of float64 arithmetic (4.5e-7
    for ``0.5 * x * (1 + erf(x / sqrt(2)))`` in float32, whose 1 + erf cancels where x < -1), and
    tests/unit/unet/test_fused_geglu.py holds the kernel's float16 results to 5e-7 or one unit in the last place.
    Written as relu(x) - |x| * Phi(-|x|) so that one tail approximation serves both signs: a reciprocal,
    an exp2 and about ten multiply-adds. The erf of the DSL's math library is slower here: on an H200
    the 33 feed-forward products of a UNet call at 16 frames 512x512 took 13.96 ms with it and 13.26 ms
    with this (bench/diagnostics/geglu_probe.py)."""
    magnitude = mlir_math.abs(x)
    t = mlir_math.rcp(1.0 + _TAIL_P * magnitude, approx=True, ftz=True)
    a1, a2, a3, a4, a5 = _TAIL_COEFFICIENTS
    polynomial = t * (a1 + t * (a2 + t * (a3 + t * (a4 + t * a5))))
    tail = polynomial * cute.math.exp2(x * x * _MINUS_HALF_LOG2_E, fastmath=True)
    return relu(x) - magnitude * tail


# The bias is one entry per output column: pinned, because QuACK infers a vector's axis from its length
# and cannot when there are as many rows (tokens) as columns.
@gemm_epilogue(outputs=("postact",), mode="acc_pair", ops={"bias": RowVecLoad("bias")})
def paired_geglu_epilogue(acc, bias):
    # The weight's rows alternate gate, value: each output's two accumulators arrive side by side, in
    # float32, before anything is rounded or stored.
    gate, value = unpack(acc + bias)
    return {"postact": gelu_exact(gate) * value}


def geglu_rows(rows, weight, bias, epilogue=paired_geglu_epilogue):
    """``value * gelu(gate)`` of dense 2D ``rows`` for a weight and bias in paired-row order, through
    ``epilogue`` (this module's; bench/diagnostics/geglu_probe.py passes others to compare)."""
    return epilogue(rows, weight.T, store_d=False, bias=bias[None])["postact"]
