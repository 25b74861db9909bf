"""Chunked WKV-7 in pure PyTorch (the CPU default, and a portable fallback on any device).

Within a chunk of L tokens starting from state S_0, write c_t = sum_{j<=t} w_j (cumulative
log-decay, per key channel) and u_t = S_{t-1} a_t. Unrolling the recurrence gives

    S_t = S_0 diag(e^{c_t}) + sum_{s<=t} (u_s b_s^T + v_s k_s^T) diag(e^{c_t - c_s})
    u_t = S_0 (a_t e^{c_{t-1}}) + sum_{s<t} [u_s (a_t e^{c_{t-1}} . b_s e^{-c_s})
                                             + v_s (a_t e^{c_{t-1}} . k_s e^{-c_s})]

so the u's of a chunk solve one unit-lower-triangular L x L system (the WY form), and the chunk
maps its start state affinely to its end state: S_L = S_0 A + C. The transition part (A and the
solve against S_0) depends only on (w, a, b): `ChunkedTransition` prepares it once, and every scan
over it (the TimeMix scan and the meta-state scan of a Meta-State layer share w, a and b) adds
only its keys and values. Only S <- S A + C runs sequentially, one small matmul per chunk. Any
query is then read from the chunk-start states kept by `ChunkedScan`: reading the Self-State
Encoder's u costs three matmuls per chunk, not a second scan.

The decay factors are taken relative to the chunk start, e^{c_t} <= 1 and e^{-c_s} >= 1, so every
output depends on its own and earlier tokens only (bitwise causal). e^{-c_s} stays below
e^{|w| L}: at L = 32 that is < e^{20} for RWKV-7 decays (|w| <= 0.61), far from fp32 overflow;
arbitrary log-decays need |w| * L < 80.
"""

import torch
import torch.nn.functional as F


def _to_chunks(x: torch.Tensor, chunk_size: int, dtype: torch.dtype) -> torch.Tensor:
    """[B, T, H, N] -> [B, H, n_chunks, L, N], zero-padded at the end of time."""
    B, T, H, N = x.shape
    pad = (-T) % chunk_size
    x = x.to(dtype)
    if pad:
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
    return x.view(B, (T + pad) // chunk_size, chunk_size, H, N).permute(0, 3, 1, 2, 4)


def _from_chunks(x: torch.Tensor, T: int, dtype: torch.dtype) -> torch.Tensor:
    """[B, H, n_chunks, L, N] -> [B, T, H, N]."""
    B, H, n_chunks, L, N = x.shape
    return x.permute(0, 2, 3, 1, 4).reshape(B, n_chunks * L, H, N)[:, :T].to(dtype)


def _unit_lower_inverse(strictly_lower: torch.Tensor) -> torch.Tensor:
    """(I - A)^{-1} for strictly lower-triangular L x L matrices A (L a power of two), built
    from 1 x 1 diagonal blocks upwards: inv([[M11, 0], [M21, M22]]) has off-diagonal block
    -M22^{-1} M21 M11^{-1}, and every diagonal block of a level is done in one batched matmul.
    ~L^3/3 flops in 2 log2(L) matmuls; torch's batched triangular solve on CPU instead loops over
    the batch one small LAPACK call at a time."""
    L = strictly_lower.shape[-1]
    if L & (L - 1):
        raise ValueError(f"wkv7: chunk_size={L} must be a power of two (16, 32 or 64)")
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


class ChunkedTransition:
    """The per-chunk preparation of one transition (w, a, b), shared by every scan over it.

    Padding steps have w = a = b = 0 (and k = v = 0 in the scans), so they leave the state
    unchanged and a final state is that of the last real token.
    """

    def __init__(self, w: torch.Tensor, a: torch.Tensor, b: torch.Tensor, chunk_size: int = 32):
        if not 1 <= chunk_size <= 256:
            raise ValueError(f"wkv7: chunk_size={chunk_size} is out of range; use 16-64")
        self.shape, self.out_dtype = w.shape, w.dtype
        self.dtype = torch.promote_types(w.dtype, torch.float32)
        self.chunk_size = L = chunk_size
        w, a, b = (_to_chunks(x, L, self.dtype) for x in (w, a, b))
        c = w.cumsum(-2)                          # inclusive cumulative log-decay
        self.decay_in = torch.exp(c)              # e^{c_t}: from the chunk start to token t
        self.decay_out = torch.exp(-c)            # e^{-c_s}
        self.decay_to_end = torch.exp(c[..., -1:, :] - c)
        device = w.device
        self.strictly_lower = torch.ones(L, L, dtype=torch.bool, device=device).tril(-1)
        self.lower = torch.ones(L, L, dtype=torch.bool, device=device).tril()
        self.zero = w.new_zeros(())
        self.a_in = a * torch.exp(c - w)          # a_t e^{c_{t-1}}
        self.b_out = b * self.decay_out
        a_b = torch.where(self.strictly_lower, self.a_in @ self.b_out.transpose(-1, -2), self.zero)
        self.wy_inverse = _unit_lower_inverse(a_b)
        self.u_from_state = self.solve(self.a_in)  # u = u_from_state @ S_0^T + u_from_values
        self.b_end = b * self.decay_to_end
        self.transition = (torch.diag_embed(torch.exp(c[..., -1, :]))
                           + self.u_from_state.transpose(-1, -2) @ self.b_end)

    def solve(self, rhs: torch.Tensor) -> torch.Tensor:
        """(I - a_b)^{-1} rhs for every chunk."""
        return self.wy_inverse @ rhs

    def scan(self, k: torch.Tensor, v: torch.Tensor, initial_state: torch.Tensor | None = None
             ) -> "ChunkedScan":
        return ChunkedScan(self, k, v, initial_state)


class ChunkedScan:
    """The states of one scan, kept at chunk starts, read by any number of queries."""

    def __init__(self, tr: ChunkedTransition, k, v, initial_state):
        self.tr = tr
        B, T, H, N = k.shape
        k, v = (_to_chunks(x, tr.chunk_size, tr.dtype) for x in (k, v))
        self.v = v
        self.k_out = k * tr.decay_out
        a_k = torch.where(tr.strictly_lower, tr.a_in @ self.k_out.transpose(-1, -2), tr.zero)
        u_from_values = tr.solve(a_k @ v)
        injection = u_from_values.transpose(-1, -2) @ tr.b_end + v.transpose(-1, -2) @ (k * tr.decay_to_end)
        state = k.new_zeros(B, H, N, N) if initial_state is None else initial_state.to(tr.dtype)
        chunk_starts = []
        # unbind, not indexing: indexing's backward would write a full-size zero gradient per chunk.
        for chunk_transition, chunk_injection in zip(tr.transition.unbind(2), injection.unbind(2)):
            chunk_starts.append(state)
            state = torch.baddbmm(chunk_injection.flatten(0, 1), state.flatten(0, 1),
                                  chunk_transition.flatten(0, 1)).view(B, H, N, N)
        self.final_state = state
        self.start_states_t = torch.stack(chunk_starts, dim=2).transpose(-1, -2)  # S_0^T per chunk
        self.u = tr.u_from_state @ self.start_states_t + u_from_values

    def read(self, q: torch.Tensor) -> torch.Tensor:
        """y_t = S_t q_t for every token of this scan; q is [B, T, H, N]."""
        tr = self.tr
        q_in = _to_chunks(q, tr.chunk_size, tr.dtype) * tr.decay_in
        y = (q_in @ self.start_states_t
             + torch.where(tr.lower, q_in @ tr.b_out.transpose(-1, -2), tr.zero) @ self.u
             + torch.where(tr.lower, q_in @ self.k_out.transpose(-1, -2), tr.zero) @ self.v)
        return _from_chunks(y, tr.shape[1], tr.out_dtype)


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
