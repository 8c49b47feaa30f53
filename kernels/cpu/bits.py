"""Numba CPU intrinsics: float <-> bit pattern, the order key of |x|.

`float_bits` reinterprets a float32/float64 as uint32/uint64 without going
through memory, so a fused loop can compute a value and its order key in one
go. `abs_key(x)` = bits(x) with the sign bit cleared, in the SAME width: Numba
would promote `uint32 & uint32` to 64 bits, which halves the SIMD lanes of the
selection loops. `zero_key(x)` is a 0 of that key type.
"""
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

_BITS = {types.float32: types.uint32, types.float64: types.uint64}
_FLOATS = {v: k for k, v in _BITS.items()}


@intrinsic
def float_bits(typingctx, x):
    """The IEEE bit pattern of x as an unsigned integer of the same width."""
    if x not in _BITS:
        return None
    sig = _BITS[x](x)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(signature.return_type))
    return sig, codegen


@intrinsic
def bits_float(typingctx, u):
    """Inverse of float_bits: the float whose bit pattern is u."""
    if u not in _FLOATS:
        return None
    sig = _FLOATS[u](u)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(signature.return_type))
    return sig, codegen


@intrinsic
def abs_key(typingctx, x):
    """|x| as an ordered unsigned integer: bits(x) & ~signbit. x is a float,
    or already a bit pattern (uint32/uint64)."""
    if x in _BITS:
        rt = _BITS[x]
    elif x in _FLOATS:
        rt = x
    else:
        return None
    sig = rt(x)

    def codegen(context, builder, signature, args):
        ty = context.get_value_type(signature.return_type)
        bits = builder.bitcast(args[0], ty)
        return builder.and_(bits, ir.Constant(ty, (1 << (ty.width - 1)) - 1))
    return sig, codegen


@intrinsic
def zero_key(typingctx, a):
    """0 in the key type of the float array a."""
    if not isinstance(a, types.Array) or a.dtype not in _BITS:
        return None
    sig = _BITS[a.dtype](a)

    def codegen(context, builder, signature, args):
        return ir.Constant(context.get_value_type(signature.return_type), 0)
    return sig, codegen


@intrinsic
def cttz(typingctx, x):
    """Number of trailing zero bits of a non-zero unsigned integer."""
    if not isinstance(x, types.Integer):
        return None
    sig = x(x)

    def codegen(context, builder, signature, args):
        (v,) = args
        fnty = ir.FunctionType(v.type, [v.type, ir.IntType(1)])
        fn = builder.module.declare_intrinsic("llvm.cttz", [v.type], fnty)
        return builder.call(fn, [v, ir.Constant(ir.IntType(1), 1)])
    return sig, codegen
