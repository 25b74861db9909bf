"""Chunked WKV-7 in pure PyTorch (the CPU default, and a portable fallback on any device).

Within a chunk of L tokens starting from state S_0, write c_t = sum_{j<=t} w_j (cumulative
log-decay, per key channel) and u_t = S_{t-1} a_t. Unrolling the recurrence gives

    S_t = S_0 diag(e^{c_t}) + sum_{s<=t} (u_s b_s^T + v_s k_s^T) diag(e^{c_t - c_s})
    u_t = S_0 (a_t e^{c_{t-1}}) + sum_{s<t} [u_s (a_t e^{c_{t-1}-c_s} . b_s)
                                             + v_s (a_t e^{c_{t-1}-c_s} . k_s)]

so the u's of a chunk solve one unit-lower-triangular L x L system (the WY form), and the chunk
maps its start state affinely to its end state: S_L = S_0 A + C. All chunks are prepared in
parallel; only S <- S A + C runs sequentially, one small matmul per chunk. Every query (the
TimeMix receptance r and the Self-State Encoder's u) is then read from the same chunk-start
states: a second query costs two L x L score matrices, not a second scan.

Pairwise decays e^{c_t - c_s} are factored as e^{c_t - m} e^{m - c_s} around the chunk's middle
m, so each factor stays within e^{|w| L / 2}: at L = 32 that is < e^{10} for RWKV-7's decays
(|w| <= 0.61), far from fp32 overflow. Arbitrary log-decays need |w| L / 2 < 80.
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
    """Chunked WKV-7 with fp32 (or float64 for float64 inputs) accumulation; exact autograd.

    Padding steps have w = a = b = k = v = 0, so they leave the state unchanged and the final
    state is that of the last real token.
    """
    if not 1 <= chunk_size <= 256:
        raise ValueError(f"wkv7: chunk_size={chunk_size} is out of range; use 16-64")
    B, T, H, N = k.shape
    out_dtype = k.dtype
    dtype = torch.promote_types(out_dtype, torch.float32)
    L = chunk_size
    w, k, v, a, b = (_to_chunks(x, L, dtype) for x in (w, k, v, a, b))
    qs = [_to_chunks(q, L, dtype) for q in queries]

    c = w.cumsum(-2)                          # inclusive cumulative log-decay
    c_excl = c - w                            # exclusive: decay applied before token t
    c_end = c[..., -1:, :]
    mid = c[..., L // 2 - 1 : L // 2, :] if L > 1 else c_end
    a_mid = a * torch.exp(c_excl - mid)
    b_mid = b * torch.exp(mid - c)
    k_mid = k * torch.exp(mid - c)

    strictly_lower = torch.ones(L, L, dtype=torch.bool, device=k.device).tril(-1)
    lower = torch.ones(L, L, dtype=torch.bool, device=k.device).tril()
    zero = k.new_zeros(())
    a_b = torch.where(strictly_lower, a_mid @ b_mid.transpose(-1, -2), zero)
    a_k = torch.where(strictly_lower, a_mid @ k_mid.transpose(-1, -2), zero)
    # u = (I - a_b)^{-1} (A_0 S_0^T + a_k V): solve once for both right-hand sides.
    eye = torch.eye(L, dtype=dtype, device=k.device)
    rhs = torch.cat([a * torch.exp(c_excl), a_k @ v], dim=-1)
    solved = torch.linalg.solve_triangular(eye - a_b, rhs, upper=False, unitriangular=True)
    u_from_state, u_from_values = solved[..., :N], solved[..., N:]

    # Chunk transition S_end = S_0 @ transition + injection.
    to_end = torch.exp(c_end - c)
    b_end, k_end = b * to_end, k * to_end
    transition = torch.diag_embed(torch.exp(c_end.squeeze(-2))) + u_from_state.transpose(-1, -2) @ b_end
    injection = u_from_values.transpose(-1, -2) @ b_end + v.transpose(-1, -2) @ k_end

    if initial_state is None:
        state = k.new_zeros(B, H, N, N)
    else:
        state = initial_state.to(dtype)
    chunk_starts = []
    # unbind, not indexing: indexing's backward would write a full-size zero gradient per chunk.
    for chunk_transition, chunk_injection in zip(transition.unbind(2), injection.unbind(2)):
        chunk_starts.append(state)
        state = torch.baddbmm(chunk_injection.flatten(0, 1), state.flatten(0, 1),
                              chunk_transition.flatten(0, 1)).view(B, H, N, N)
    start_states_t = torch.stack(chunk_starts, dim=2).transpose(-1, -2)   # S_0^T per chunk

    u = u_from_state @ start_states_t + u_from_values
    outputs = []
    for q in qs:
        q_mid = q * torch.exp(c - mid)
        y = (
            (q * torch.exp(c)) @ start_states_t
            + torch.where(lower, q_mid @ b_mid.transpose(-1, -2), zero) @ u
            + torch.where(lower, q_mid @ k_mid.transpose(-1, -2), zero) @ v
        )
        outputs.append(_from_chunks(y, T, out_dtype))
    return tuple(outputs), (state if output_final_state else None)
