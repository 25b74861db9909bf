"""Chunked WKV-7 in pure PyTorch (the CPU default, and a portable fallback on any device).

Within a chunk of L tokens starting from state S_0, write c_t = sum_{j<=t} w_j (cumulative
log-decay, per key channel) and u_t = S_{t-1} a_t. Unrolling the recurrence gives

    S_t = S_0 diag(e^{c_t}) + sum_{s<=t} (u_s b_s^T + v_s k_s^T) diag(e^{c_t - c_s})
    u_t = S_0 (a_t e^{c_{t-1}}) + sum_{s<t} [u_s (a_t e^{c_{t-1}} . b_s e^{-c_s})
                                             + v_s (a_t e^{c_{t-1}} . k_s e^{-c_s})]

so the u's of a chunk solve one unit-lower-triangular L x L system (the WY form): u = P S_0^T + U
with P = (I - A_ab)^{-1} a_in and U = (I - A_ab)^{-1} A_ak v, and the chunk ends in
S_L = S_0 diag(e^{c_L}) + u^T b_end + v^T k_end. P depends only on (w, a, b):
`ChunkedTransition` prepares it once, and every scan over it (the TimeMix scan and the meta-state
scan of a Meta-State layer share w, a and b) adds only its keys and values. Only the two small
products u = P S_0^T + U and S_L = ... run sequentially per chunk (`_StateScan`; no N x N chunk
transition matrix is formed). Any query is then read from the chunk-start states and the u's
kept by `ChunkedScan`: reading the Self-State Encoder's u costs three matmuls per chunk, not a
second scan.

Speed on CPU (see benchmarks/RESULTS.md): all chunks live in one contiguous chunk-major batch
[n_chunks * B * H, L, N], so every batched matmul runs on plain strided batches; the sequential
state scan, the WY inverse and the decay factors have hand-written backward passes (a reverse
chunk scan; two matmuls; one signed sum and a reverse cumulative sum) instead of autograd's
per-chunk and per-elementwise-op nodes; the intra-chunk read-out is one [L, 2L] score product.

The decay factors are taken relative to the chunk start, e^{c_t} <= 1 and e^{-c_s} >= 1, so every
output depends on its own and earlier tokens only (bitwise causal). e^{-c_s} stays below
e^{|w| L}: at L = 32 that is < e^{20} for RWKV-7 decays (|w| <= 0.61), far from fp32 overflow;
arbitrary log-decays need |w| * L < 80.
"""

import functools

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ops.config import chunk_size_problem


def _without_autocast(fn):
    """Run `fn` with autocast off on the device of its first tensor argument.

    Under torch.autocast (bf16 training) the batched matmuls here would run in bf16 and write
    into the fp32 state buffers in place ("Bad in-place call"), and a bf16 WY inverse and state
    scan lose the state's precision over a long sequence. The whole backend therefore computes in
    fp32 (float64 for float64 inputs) and returns outputs in the inputs' dtype; the backward
    passes below are wrapped too, since a backward called inside an autocast region would
    otherwise autocast them."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        device = next(x.device.type for x in (*args, *kwargs.values()) if isinstance(x, torch.Tensor))
        with torch.autocast(device, enabled=False):
            return fn(*args, **kwargs)

    return wrapper


def _to_chunks(x: torch.Tensor, chunk_size: int, dtype: torch.dtype) -> torch.Tensor:
    """[B, T, H, N] -> contiguous [n_chunks * B * H, L, N] (chunk-major), zero-padded at the end.

    Made contiguous once here: a batched matmul over the permuted view would copy its operand on
    every call (and again in its backward). Chunk-major, so that one chunk of every sequence is
    one contiguous block for the sequential state scan."""
    B, T, H, N = x.shape
    pad = (-T) % chunk_size
    x = x.to(dtype)
    if pad:
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
    x = x.view(B, (T + pad) // chunk_size, chunk_size, H, N).permute(1, 0, 3, 2, 4)
    return x.reshape(-1, chunk_size, N)


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous: the gradient of an output
    arrives as a permuted view of [B, T, H, N], and batched matmuls over such strided batches fall
    back to one copy per chunk (on CPU: ~4x slower backward matmuls)."""

    @staticmethod
    def forward(ctx, x):
        return x

    @staticmethod
    @once_differentiable
    @_without_autocast
    def backward(ctx, grad):
        return grad.contiguous()


def _from_chunks(x: torch.Tensor, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """[n_chunks * B * H, L, N] -> [B, T, H, N] (`shape`)."""
    B, T, H, N = shape
    L = x.shape[-2]
    x = _ContiguousGrad.apply(x).view(-1, B, H, L, N).permute(1, 0, 3, 2, 4)
    return x.reshape(B, -1, H, N)[:, :T].to(dtype)


def _unit_lower_inverse_forward(strictly_lower: torch.Tensor) -> torch.Tensor:
    """(I - A)^{-1} for strictly lower-triangular L x L matrices A (L a power of two), built
    from 1 x 1 diagonal blocks upwards: inv([[M11, 0], [M21, M22]]) has off-diagonal block
    -M22^{-1} M21 M11^{-1}, and every diagonal block of a level is done in one batched matmul.
    ~L^3/3 flops in 2 log2(L) matmuls; torch's batched triangular solve on CPU instead loops over
    the batch one small LAPACK call at a time."""
    L = strictly_lower.shape[-1]
    batch = strictly_lower.shape[:-2]
    inverse = strictly_lower.new_ones(*batch, L, 1, 1)          # [..., blocks, size, size]
    size = 1
    while size < L:
        blocks = L // (2 * size)
        # the lower-left size x size block of each 2size x 2size diagonal block of A
        pairs = strictly_lower.reshape(*batch, blocks, 2 * size, blocks, 2 * size)
        lower_left = pairs.diagonal(dim1=-4, dim2=-2).movedim(-1, -3)[..., size:, :size]
        upper, lower = inverse[..., 0::2, :, :], inverse[..., 1::2, :, :]
        off_diagonal = lower @ lower_left @ upper
        inverse = torch.cat([torch.cat([upper, torch.zeros_like(upper)], -1),
                             torch.cat([off_diagonal, lower], -1)], -2)
        size *= 2
    return inverse[..., 0, :, :]


class _UnitLowerInverse(torch.autograd.Function):
    """M = (I - A)^{-1} with the analytic backward dA = tril(M^T dM M^T, -1): two matmuls
    instead of autograd replaying the 2 log2(L) block products and concatenations."""

    @staticmethod
    def forward(ctx, strictly_lower):
        inverse = _unit_lower_inverse_forward(strictly_lower)
        ctx.save_for_backward(inverse)
        return inverse

    @staticmethod
    @once_differentiable
    @_without_autocast
    def backward(ctx, grad_inverse):
        (inverse,) = ctx.saved_tensors
        inverse_t = inverse.transpose(-1, -2)
        return (inverse_t @ grad_inverse @ inverse_t).tril(-1)


class _StateScan(torch.autograd.Function):
    """The sequential part, chunk by chunk i of every sequence (operands [n, batch, ...]):

        u_i = P_i S_i^T + U_i                            (the WY solve against the start state)
        S_{i+1} = S_i diag(d_i) + u_i^T B_i + K_i         (d_i = e^{c_L}, K_i = v^T k_end)

    with P = u_from_state, U = u_from_values, B = b_end. It never forms the chunk's N x N
    transition matrix: per chunk that is two L x N x N products instead of one N^3 product plus
    the transition's own N x L x N product, and u comes out of the loop. Returns the chunk-start
    states [n, batch, N, N], u [n, batch, L, N] and the final state. The backward runs the reverse
    scan (two small matmuls per chunk); the gradients of P, B and d then come out of batched
    products over all chunks at once, not autograd's per-chunk nodes."""

    @staticmethod
    def forward(ctx, P, U, B, K, d, initial_state):
        n = P.shape[0]
        states = K.new_empty(n + 1, *K.shape[1:])      # S_0 .. S_n
        states[0] = initial_state
        u = U.clone()
        for i in range(n):                             # in place: no per-chunk temporaries
            u[i].baddbmm_(P[i], states[i].transpose(-1, -2))
            torch.addcmul(K[i], states[i], d[i], out=states[i + 1])
            states[i + 1].baddbmm_(u[i].transpose(-1, -2), B[i])
        starts = states[:n]
        ctx.save_for_backward(P, B, d, starts, u)
        return starts, u, states[n]

    @staticmethod
    @once_differentiable
    @_without_autocast
    def backward(ctx, grad_starts, grad_u, grad_final):
        P, B, d, starts, u = ctx.saved_tensors
        n = P.shape[0]
        grads = torch.empty(n + 1, *starts.shape[1:], dtype=starts.dtype, device=starts.device)
        if grad_final is None:                         # grads[i] = dL/dS_i; dL/dK_i = grads[i+1]
            grads[n].zero_()
        else:
            grads[n] = grad_final
        # dL/du_i, through the loop and directly
        grad_u_total = torch.zeros_like(u) if grad_u is None else grad_u.clone()
        for i in reversed(range(n)):
            g = grads[i + 1]
            grad_u_total[i].baddbmm_(B[i], g.transpose(-1, -2))
            if grad_starts is None:
                torch.mul(g, d[i], out=grads[i])
            else:
                torch.addcmul(grad_starts[i], g, d[i], out=grads[i])
            grads[i].baddbmm_(grad_u_total[i].transpose(-1, -2), P[i])
        grad_after = grads[1:]
        grad_P = grad_u_total @ starts
        grad_B = u @ grad_after
        grad_d = (starts * grad_after).sum(-2, keepdim=True)
        return grad_P, grad_u_total, grad_B, grad_after, grad_d, grads[0]


class _ChunkDecays(torch.autograd.Function):
    """The decay factors of every chunk and the decayed a and b, from chunked (w, a, b):

        c_t = sum_{j<=t} w_j,  e^{c_t},  e^{-c_t},  e^{c_L - c_t},
        a_t e^{c_{t-1}},  b_t e^{-c_t},  b_t e^{c_L - c_t}

    with one hand-written backward: every output is some x e^{+-c_t (+ c_L)}, so the gradient of
    c_t is a signed sum of (output gradient * output) and the gradient of w a reverse cumulative
    sum of it, instead of autograd's chain of exp, neg, sub, expand and mul nodes."""

    @staticmethod
    def forward(ctx, w, a, b):
        decay_in = torch.exp(w.cumsum(-2))
        decay_out = torch.reciprocal(decay_in)
        decay_to_end = decay_out * decay_in[:, -1:, :]
        a_scale = torch.empty_like(decay_in)               # e^{c_{t-1}}: decay_in shifted by one
        a_scale[:, :1] = 1.0
        a_scale[:, 1:] = decay_in[:, :-1]
        a_in = a * a_scale
        b_out = b * decay_out
        b_end = b * decay_to_end
        # e^{c_L} as its own output: the backward of a slice of decay_in would write a full-size
        # zero gradient and add it to decay_in's
        decay_chunk = decay_in[:, -1:, :].clone()
        ctx.save_for_backward(decay_in, decay_out, decay_to_end, a_scale, a_in, b_out, b_end, decay_chunk)
        return decay_in, decay_out, decay_to_end, a_in, b_out, b_end, decay_chunk

    @staticmethod
    @once_differentiable
    @_without_autocast
    def backward(ctx, g_in, g_out, g_to_end, g_a_in, g_b_out, g_b_end, g_chunk):
        decay_in, decay_out, decay_to_end, a_scale, a_in, b_out, b_end, decay_chunk = ctx.saved_tensors
        # d loss / d c_t, and the terms that also depend on c_L (started from the first term
        # present rather than from a zero fill)
        grad_c = g_in * decay_in if g_in is not None else torch.zeros_like(decay_in)
        grad_end = g_to_end * decay_to_end if g_to_end is not None else torch.zeros_like(decay_in)
        grad_a = grad_b = None
        if g_out is not None:
            grad_c.addcmul_(g_out, decay_out, value=-1.0)
        if g_a_in is not None:                 # a_in_t depends on c_{t-1}
            grad_c[:, :-1].addcmul_(g_a_in[:, 1:], a_in[:, 1:])
            grad_a = g_a_in * a_scale
        if g_b_out is not None:
            grad_c.addcmul_(g_b_out, b_out, value=-1.0)
            grad_b = g_b_out * decay_out
        if g_b_end is not None:
            grad_end.addcmul_(g_b_end, b_end)
            grad_b = g_b_end * decay_to_end if grad_b is None else grad_b.addcmul_(g_b_end, decay_to_end)
        grad_c.sub_(grad_end)
        grad_c[:, -1:, :] += grad_end.sum(-2, keepdim=True)
        if g_chunk is not None:
            grad_c[:, -1:, :].addcmul_(g_chunk, decay_chunk)
        # c_t = sum_{j<=t} w_j: grad_w_j = sum_{t>=j} grad_c_t
        grad_w = grad_c.sum(-2, keepdim=True) - grad_c.cumsum(-2) + grad_c
        if grad_a is None:
            grad_a = torch.zeros_like(a_in)
        if grad_b is None:
            grad_b = torch.zeros_like(b_out)
        return grad_w, grad_a, grad_b


class ChunkedTransition:
    """The per-chunk preparation of one transition (w, a, b), shared by every scan over it.

    Padding steps have w = a = b = 0 (and k = v = 0 in the scans), so they leave the state
    unchanged and a final state is that of the last real token.
    """

    # torch.compile (train.compile) runs the chunked backend eagerly, behind a graph break: tracing
    # its hand-written autograd Functions and per-chunk loops cost ~100 s of compile time per block
    # in tests/training, for no speed-up of what are already large batched matmuls.
    @torch.compiler.disable
    @_without_autocast
    def __init__(self, w: torch.Tensor, a: torch.Tensor, b: torch.Tensor, chunk_size: int = 32):
        problem = chunk_size_problem(chunk_size)
        if problem:
            raise ValueError(f"wkv7: {problem}")
        self.shape, self.out_dtype = w.shape, w.dtype
        self.dtype = torch.promote_types(w.dtype, torch.float32)
        self.chunk_size = L = chunk_size
        w, a, b = (_to_chunks(x, L, self.dtype) for x in (w, a, b))
        (self.decay_in, self.decay_out, self.decay_to_end,  # e^{c_t}, e^{-c_t}, e^{c_L - c_t}
         self.a_in, self.b_out, self.b_end,
         self.decay_chunk) = _ChunkDecays.apply(w, a, b)   # ..., e^{c_L}: the whole chunk's decay
        self.wy_inverse = _UnitLowerInverse.apply((self.a_in @ self.b_out.transpose(-1, -2)).tril(-1))
        self.u_from_state = self.wy_inverse @ self.a_in   # u = u_from_state @ S_0^T + u_from_values

    def scan(self, k: torch.Tensor, v: torch.Tensor, initial_state: torch.Tensor | None = None
             ) -> "ChunkedScan":
        return ChunkedScan(self, k, v, initial_state)


class ChunkedScan:
    """The states of one scan, kept at chunk starts, read by any number of queries."""

    @torch.compiler.disable  # see ChunkedTransition.__init__
    @_without_autocast
    def __init__(self, tr: ChunkedTransition, k, v, initial_state):
        self.tr = tr
        B, T, H, N = k.shape
        k, v = (_to_chunks(x, tr.chunk_size, tr.dtype) for x in (k, v))
        k_out = k * tr.decay_out
        a_k = (tr.a_in @ k_out.transpose(-1, -2)).tril(-1)
        u_from_values = tr.wy_inverse @ (a_k @ v)
        injection = v.transpose(-1, -2) @ (k * tr.decay_to_end)
        if initial_state is None:
            state = k.new_zeros(B * H, N, N)
        else:
            state = initial_state.to(tr.dtype).reshape(B * H, N, N)
        L = tr.chunk_size
        starts, u, final = _StateScan.apply(
            tr.u_from_state.view(-1, B * H, L, N), u_from_values.view(-1, B * H, L, N),
            tr.b_end.view(-1, B * H, L, N), injection.view(-1, B * H, N, N),
            tr.decay_chunk.view(-1, B * H, 1, N), state)
        self.final_state = final.view(B, H, N, N)
        self.start_states_t = starts.view(-1, N, N).transpose(-1, -2)   # S_0^T per chunk
        u = u.view(-1, L, N)
        # the intra-chunk read-out y += tril(q b_out^T) u + tril(q k_out^T) v as one product
        self.keys_out = torch.cat([tr.b_out, k_out], -2)               # [L2 = 2L, N]
        self.values = torch.cat([u, v], -2)
        self.read_mask = k.new_ones(L, L).tril().repeat(1, 2)     # 0/1: a product beats masked_fill

    @torch.compiler.disable  # see ChunkedTransition.__init__
    @_without_autocast
    def read(self, q: torch.Tensor) -> torch.Tensor:
        """y_t = S_t q_t for every token of this scan; q is [B, T, H, N]."""
        tr = self.tr
        q_in = _to_chunks(q, tr.chunk_size, tr.dtype) * tr.decay_in
        scores = (q_in @ self.keys_out.transpose(-1, -2)) * self.read_mask
        y = torch.baddbmm(scores @ self.values, q_in, self.start_states_t)
        return _from_chunks(y, tr.shape, tr.out_dtype)


def wkv7_chunked(
    queries: tuple[torch.Tensor, ...],
    w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 32,
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
    """Chunked WKV-7 read by every query, with fp32 (float64 for float64 inputs) accumulation."""
    scan = ChunkedTransition(w, a, b, chunk_size).scan(k, v, initial_state)
    outputs = tuple(scan.read(q) for q in queries)
    return outputs, (scan.final_state if output_final_state else None)
