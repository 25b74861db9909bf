"""The public recurrences of the stack, each dispatching to a backend by name and device.

A Meta-State layer runs three recurrences over one transition (w, a, b): the TimeMix scan (query
r), the Self-State Encoder's read-out of the same states (query u, known only after the TimeMix
output is added to the residual) and the meta-state scan (k = v = q = z). `Wkv7Transition`
prepares the transition once and `Wkv7Scan.read` reads a finished scan's states with a new query;
on the chunked backend neither re-runs a scan. `wkv7`, `wkv7_sse` and `meta_state_scan` are
one-call forms of the same objects.
"""

import torch

from ops.config import BACKENDS
from ops.rwkv7 import fla_available, wkv7_fla, wkv7_reference
from ops.rwkv7.checks import check_wkv7_inputs
from ops.rwkv7.chunk import ChunkedTransition
from ops.rwkv7.step import OneStepScan


def resolve_backend(backend: str, device: torch.device) -> str:
    """'auto' -> 'fla' on CUDA when importable, else 'chunked'. Other names are checked."""
    if backend not in BACKENDS:
        raise ValueError(f"wkv7: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    return "fla" if device.type == "cuda" and fla_available() else "chunked"


class Wkv7Transition:
    """One sequence's transition diag(exp(w_t)) + a_t b_t^T per head, for any number of scans.

    Example:
        >>> transition = Wkv7Transition(w, -kk, kk * a)
        >>> timemix = transition.scan(r, k, v, initial_state=s0, output_final_state=True)
        >>> z = timemix.read(u)                         # S_t u_t, no second scan (chunked)
        >>> meta = transition.scan(z, z, z)             # reuses the transition's preparation
    """

    def __init__(self, w, a, b, backend: str = "auto", chunk_size: int = 32):
        check_wkv7_inputs({"w": w, "a": a, "b": b}, None)
        self.w, self.a, self.b = w, a, b
        self.backend = resolve_backend(backend, w.device)
        self.chunk_size = chunk_size
        # one token (a decode step) on the chunked backend: the update itself, no chunk machinery
        self.one_step = self.backend == "chunked" and w.shape[1] == 1
        self.chunked = (ChunkedTransition(w, a, b, chunk_size)
                        if self.backend == "chunked" and not self.one_step else None)

    def scan(self, r, k, v, initial_state=None, output_final_state: bool = False) -> "Wkv7Scan":
        """S_t = S_{t-1}(diag(exp(w_t)) + a_t b_t^T) + v_t k_t^T, read by r; see Wkv7Scan."""
        check_wkv7_inputs({"k": k, "r": r, "v": v, "w": self.w}, initial_state)
        return Wkv7Scan(self, r, k, v, initial_state, output_final_state)


class Wkv7Scan:
    """A finished scan: `output` (y_t = S_t r_t), `final_state` (or None), and `read(q)`."""

    def __init__(self, transition: Wkv7Transition, r, k, v, initial_state, output_final_state):
        self.transition = transition
        self.k, self.v, self.initial_state = k, v, initial_state
        if transition.one_step:
            self._chunked = OneStepScan(transition.w, transition.a, transition.b, k, v, initial_state)
            self.output = self._chunked.read(r)
            final = self._chunked.final_state
        elif transition.chunked is not None:
            self._chunked = transition.chunked.scan(k, v, initial_state)
            self.output = self._chunked.read(r)
            final = self._chunked.final_state
        else:
            (self.output,), final = self._full_scan(r, output_final_state)
        self.final_state = final if output_final_state else None

    def read(self, q: torch.Tensor) -> torch.Tensor:
        """S_t q_t for every token, from this scan's states (a second kernel call on fla)."""
        check_wkv7_inputs({"k": self.k, "q": q}, None)
        if self.transition.chunked is not None or self.transition.one_step:
            return self._chunked.read(q)
        (y,), _ = self._full_scan(q, False)
        return y

    def _full_scan(self, q, output_final_state):
        tr = self.transition
        run = wkv7_reference if tr.backend == "reference" else wkv7_fla
        return run((q,), tr.w, self.k, self.v, tr.a, tr.b, self.initial_state, output_final_state)


def wkv7(r, w, k, v, a, b, initial_state=None, output_final_state=False, backend="auto",
         chunk_size=32):
    """RWKV-7 state recurrence, per head: S_t = S_{t-1}(diag(exp(w_t)) + a_t b_t^T) + v_t k_t^T,
    y_t = S_t r_t. All inputs `[B, T, H, N]`; w is the log-decay; state `[B, H, N_v, N_k]`.

    Returns (y, final_state or None). RWKV-7 passes a = -kk, b = kk * a.

    Example:
        >>> y, state = wkv7(r, w, k, v, -kk, kk * a, output_final_state=True)
    """
    check_wkv7_inputs({"k": k, "r": r, "v": v, "w": w, "a": a, "b": b}, initial_state)
    scan = Wkv7Transition(w, a, b, backend, chunk_size).scan(r, k, v, initial_state, output_final_state)
    return scan.output, scan.final_state


def wkv7_sse(r, u, w, k, v, a, b, initial_state=None, output_final_state=False, backend="auto",
             chunk_size=32):
    """WKV-7 read by two queries known up front: y_t = S_t r_t and z_t = S_t u_t.

    Returns (y, z, final_state or None). When u depends on y, use `Wkv7Transition.scan(...).read(u)`.

    Example:
        >>> y, z, _ = wkv7_sse(r, u, w, k, v, -kk, kk * a)
    """
    check_wkv7_inputs({"k": k, "r": r, "u": u, "v": v, "w": w, "a": a, "b": b}, initial_state)
    scan = Wkv7Transition(w, a, b, backend, chunk_size).scan(r, k, v, initial_state, output_final_state)
    return scan.output, scan.read(u), scan.final_state


def meta_state_scan(z, w, a, b, initial_state=None, output_final_state=False, backend="auto",
                    chunk_size=32, transition: Wkv7Transition | None = None):
    """Meta-state recurrence M_t = M_{t-1}(diag(exp(w_t)) + a_t b_t^T) + z_t z_t^T, read as M_t z_t.

    It shares the TimeMix's transition: pass the layer's `transition` to reuse its preparation
    (w, a, b, backend and chunk_size are then taken from it).

    Example:
        >>> o, _ = meta_state_scan(z, w, -kk, kk * a)
    """
    if transition is None:
        transition = Wkv7Transition(w, a, b, backend, chunk_size)
    scan = transition.scan(z, z, z, initial_state, output_final_state)
    return scan.output, scan.final_state
