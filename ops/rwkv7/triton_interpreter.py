"""Running fla's Triton kernels on CPU tensors under Triton's interpreter (`TRITON_INTERPRET=1`).

This is how the stack tests its GPU kernel path on machines without a GPU: the interpreter
executes every kernel with numpy, exactly (fp32 to ~1e-6 of a float64 loop; bf16 arithmetic is
not faithful there, fp16 is), slowly (seconds per small call). Three things stop fla-core 0.6's
`chunk_rwkv7` in the stock interpreter (triton 3.6-3.8), and `enable()` patches each in place,
in triton's and fla's loaded modules, without copying any of their code:

1. `triton.autotune` benchmarks its configs through the active GPU driver, and there is none
   ("0 active drivers"): the autotuner keeps the first config that survives pruning and never
   benchmarks (timings mean nothing in the interpreter anyway).
2. fla keeps its own alias of `tl.gather` (`fla.ops.utils.op.gather`, imported by its kernels).
   The interpreter swaps `tl.gather` for its implementation only while a kernel runs, so the
   alias still holds the compiled-mode builtin ("Did you forget to add @triton.jit ?"): every
   fla module's alias is pointed at a function that looks `tl.gather` up when called.
3. In the interpreter a `for i in range(n)` variable is a Python int, where compiled Triton gives
   a tensor (`i_t.to(tl.int64)` in fla's `chunk_h_fwd.py` fails): the interpreter's source
   rewrite also turns such loop variables into tensors at the top of each iteration.

Call `enable()` once, before the first kernel call; `ops.wkv7(backend="fla")` does so itself
when the interpreter is on and its inputs are CPU tensors. Nothing here runs without
`TRITON_INTERPRET=1`.
"""

import ast
import os
import sys

_enabled = False


def interpreter_on() -> bool:
    """True when Triton's interpreter is requested (`TRITON_INTERPRET=1`)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def enable() -> None:
    """Patch triton's interpreter and fla's loaded modules so that fla's kernels run on CPU."""
    global _enabled
    if _enabled:
        return
    if not interpreter_on():
        raise RuntimeError("the Triton interpreter patches need TRITON_INTERPRET=1 set before "
                           "triton is imported")
    import fla.ops.rwkv7  # noqa: F401  (loads every kernel module whose aliases are patched below)
    _keep_one_autotune_config()
    _late_bound_gather()
    _tensor_loop_variables()
    _enabled = True


def _keep_one_autotune_config() -> None:
    from triton.runtime.autotuner import Autotuner

    run = Autotuner.run

    def run_first_config(self, *args, **kwargs):
        if len(self.configs) <= 1:
            return run(self, *args, **kwargs)
        self.nargs = dict(zip(self.arg_names, args))
        configs = self.configs
        self.configs = self.prune_configs(kwargs)[:1]
        try:
            return run(self, *args, **kwargs)
        finally:
            self.configs = configs

    Autotuner.run = run_first_config


def _late_bound_gather() -> None:
    import triton.language as tl

    compiled_gather = tl.gather

    def gather(src, index, axis, **_):
        return tl.gather(src, index, axis)   # the interpreter's, while a kernel runs

    for name, module in list(sys.modules.items()):
        if name.startswith("fla.") and getattr(module, "gather", None) is compiled_gather:
            module.gather = gather


class _LoopVariablesAsTensors(ast.NodeTransformer):
    """`for i in range(...)` -> the same loop with `i = interpreter_semantic.to_tensor(i, False)`
    as its first statement (the interpreter's own rewrite then visits the assignments)."""

    def visit_For(self, node):
        self.generic_visit(node)
        is_range = (isinstance(node.iter, ast.Call) and isinstance(node.iter.func, ast.Name)
                    and node.iter.func.id == "range")
        if is_range and isinstance(node.target, ast.Name):
            to_tensor = ast.Call(
                func=ast.Attribute(value=ast.Name(id="interpreter_semantic", ctx=ast.Load()),
                                   attr="to_tensor", ctx=ast.Load()),
                args=[ast.Name(id=node.target.id, ctx=ast.Load()), ast.Constant(value=False)],
                keywords=[])
            node.body.insert(0, ast.Assign(targets=[ast.Name(id=node.target.id, ctx=ast.Store())],
                                           value=to_tensor))
        return node


def _tensor_loop_variables() -> None:
    from triton.runtime import interpreter

    base = interpreter.FunctionRewriter.ast_transformer

    class Rewrite(ast.NodeTransformer):
        def visit(self, node):
            return base.visit(_LoopVariablesAsTensors().visit(node))

    interpreter.FunctionRewriter.ast_transformer = Rewrite()
