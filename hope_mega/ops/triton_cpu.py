"""Run fla's Triton kernels under Triton's interpreter on a machine without a GPU.

Only for tests and debugging on CPU: interpreted kernels execute every program instance in numpy,
orders of magnitude slower than compiled ones. Two things in Triton 3.x's interpreter stop fla's
chunked gated delta rule from running there, and `enable_triton_interpreter` patches exactly those:

1. Autotuning. Triton's autotuner times every candidate config through the active driver's
   benchmarker; under the interpreter there is no driver ("0 active drivers"), and timing an
   interpreted kernel would say nothing about GPU speed anyway. We keep only the first surviving
   config, so the autotuner takes its ordinary single-config path: no timing, no tuning cache.
   Every config computes the same result, so which one runs does not matter for correctness.

2. Loop variables. Compiled Triton turns the induction variable of a `range` / `tl.range` loop
   into a tensor (int32), and kernels rely on it: fla writes `i_t.to(tl.int64)`. The interpreter
   runs the loop as a plain Python loop, so the variable is a Python int and `.to` fails. We extend
   the interpreter's source rewrite (it already wraps every assignment in `to_tensor`) so that
   these loops rebind their variable as a tensor at the top of the body, as compiled code has it.
   `tl.static_range` is left alone: its variable is a compile-time constant in compiled code too.

The kernels are bound to the interpreter when they are defined (`triton.jit` reads
TRITON_INTERPRET at decoration time), so this must run before triton, and hence fla, is imported.
"""

from __future__ import annotations

import ast
import os
import sys

_enabled = False


def enable_triton_interpreter() -> None:
    """Make Triton kernels run interpreted on CPU. Call before anything imports triton."""
    global _enabled
    if _enabled:
        return
    if "triton" in sys.modules:
        raise RuntimeError(
            "enable_triton_interpreter() must be called before triton is imported (importing fla "
            "imports triton): kernels defined before it would stay bound to the compiler. Call it "
            "first thing in a fresh process."
        )
    os.environ["TRITON_INTERPRET"] = "1"

    from triton.runtime import interpreter
    from triton.runtime.autotuner import Autotuner

    prune_configs = Autotuner.prune_configs

    def first_config_only(self, kwargs):
        return prune_configs(self, kwargs)[:1]

    Autotuner.prune_configs = first_config_only

    def visit_for(self, node: ast.For) -> ast.For:
        node = self.generic_visit(node)
        if isinstance(node.target, ast.Name) and _is_dynamic_range(node.iter):
            name = node.target.id
            # The same call the interpreter puts around every assignment's value.
            as_tensor = ast.Call(
                func=ast.Attribute(
                    value=ast.Name(id="interpreter_semantic", ctx=ast.Load()), attr="to_tensor", ctx=ast.Load()
                ),
                args=[ast.Name(id=name, ctx=ast.Load()), ast.Constant(value=False)],
                keywords=[],
            )
            rebind = ast.Assign(targets=[ast.Name(id=name, ctx=ast.Store())], value=as_tensor)
            node.body.insert(0, ast.copy_location(rebind, node))
        return node

    interpreter.ASTTransformer.visit_For = visit_for
    _enabled = True


def _is_dynamic_range(it: ast.expr) -> bool:
    """`range(...)` or `<module>.range(...)`, the loops compiled Triton gives a tensor variable."""
    if not isinstance(it, ast.Call):
        return False
    f = it.func
    return (isinstance(f, ast.Name) and f.id == "range") or (isinstance(f, ast.Attribute) and f.attr == "range")
