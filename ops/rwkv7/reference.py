"""Step-loop WKV-7: the ground truth every other backend is tested against.

Per head, with S in R^{N_value x N_key}:
    S_t = S_{t-1} (diag(exp(w_t)) + a_t b_t^T) + v_t k_t^T,     y_t = S_t q_t
for every query q (RWKV-7's receptance r, and the Self-State Encoder's u).
"""

import torch


def wkv7_reference(
    queries: tuple[torch.Tensor, ...],
    w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    compute_dtype: torch.dtype = torch.float64,
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
    """Run the recurrence one token at a time in `compute_dtype` (float64: ground truth)."""
    B, T, H, N = k.shape
    out_dtype = k.dtype
    qs = [q.to(compute_dtype) for q in queries]
    w, k, v, a, b = (x.to(compute_dtype) for x in (w, k, v, a, b))
    decay = torch.exp(w)
    if initial_state is None:
        state = k.new_zeros(B, H, N, N)
    else:
        state = initial_state.to(compute_dtype)
    outputs: list[list[torch.Tensor]] = [[] for _ in qs]
    # unbind along time rather than index: an indexed slice's backward allocates a full-size
    # zero gradient per step, which would make the loop quadratic in T.
    steps = zip(decay.unbind(1), k.unbind(1), v.unbind(1), a.unbind(1), b.unbind(1),
                *(q.unbind(1) for q in qs))
    for d_t, k_t, v_t, a_t, b_t, *q_ts in steps:
        removal = (state @ a_t[..., None]) @ b_t[..., None, :]
        state = state * d_t[..., None, :] + removal + v_t[..., None] @ k_t[..., None, :]
        for out, q_t in zip(outputs, q_ts):
            out.append((state @ q_t[..., None]).squeeze(-1))
    ys = tuple(torch.stack(out, dim=1).to(out_dtype) for out in outputs)
    final_state = state.to(torch.promote_types(out_dtype, torch.float32)) if output_final_state else None
    return ys, final_state
