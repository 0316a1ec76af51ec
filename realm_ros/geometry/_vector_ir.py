"""LLVM IR building blocks shared by the CPU matcher's vector kernels (:mod:`._matching_cpu`, :mod:`._matching_tiles`):
a value broadcast to every lane, the lane-wise fused multiply-add, and a counted loop. Only imported with numba."""
from __future__ import annotations

from typing import Any, Callable

from llvmlite import ir
from numba.core import cgutils

__all__ = ['splat', 'vector_fma', 'counted_loop']


def splat(builder: Any, value: Any, vtype: ir.VectorType) -> Any:
    """``value`` in every lane of a ``vtype`` vector (insertelement + zero-mask shufflevector: one broadcast)."""
    undef = ir.Constant(vtype, ir.Undefined)
    v = builder.insert_element(undef, value, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(v, undef, ir.Constant(ir.VectorType(ir.IntType(32), vtype.count), [0] * vtype.count))


def vector_fma(builder: Any, vtype: ir.VectorType) -> Any:
    """``llvm.fma`` on ``vtype`` vectors of float32: ``fma(a, b, c)`` = ``a * b + c`` rounded once per lane."""
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(vtype, [vtype, vtype, vtype]),
                                          f'llvm.fma.v{vtype.count}f32')


def counted_loop(builder: Any, name: str, first: Any, cond: Callable[[Any], Any], step: int,
                 body: Callable[[Any], None]) -> None:
    """``for (v = first; cond(v); v += step) body(v)`` with ``v`` an i64 kept in an alloca (promoted to a register
    by mem2reg); the builder is left after the loop."""
    i64 = ir.IntType(64)
    var = cgutils.alloca_once_value(builder, first)
    head, blk, end = (builder.append_basic_block(f'{name}_{t}') for t in ('head', 'body', 'end'))
    builder.branch(head)
    builder.position_at_end(head)
    v = builder.load(var)
    builder.cbranch(cond(v), blk, end)
    builder.position_at_end(blk)
    body(v)
    builder.store(builder.add(builder.load(var), ir.Constant(i64, step)), var)
    builder.branch(head)
    builder.position_at_end(end)
