"""QuACK's GEMM with the GEGLU in its epilogue. It imports QuACK, so only openspeedy/unet/geglu.py imports
it, and only where the kernel can run."""

from quack.activation import gelu_erf
from quack.epilogue.frontend import gemm_epilogue, unpack
from quack.epilogue.ops import RowVecLoad


# The bias is one entry per output column: pinned, because QuACK infers a vector's axis from its length
# and cannot when there are as many rows (tokens) as columns.
@gemm_epilogue(outputs=("postact",), mode="acc_pair", ops={"bias": RowVecLoad("bias")})
def paired_geglu_epilogue(acc, bias):
    # The weight's rows alternate gate, value: each output's two accumulators arrive side by side, in
    # float32, before anything is rounded or stored.
    gate, value = unpack(acc + bias)
    return {"postact": gelu_erf(gate) * value}
