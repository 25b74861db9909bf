"""The language-model head and its cross-entropy, fused and chunked over tokens.

`F.cross_entropy(head(h).float(), targets)` holds [N, V] fp32 logits, their softmax and their
gradient at once: at N = 8 x 4096 and V = 50304 that is 6.6 GB per copy. Here the N tokens are
cut into chunks of `chunk_size`; for each chunk the forward pass computes the logits, the loss
and at once the chunk's gradients (dL/dh rows, and its share of dL/dW accumulated in fp32), so
no [N, V] tensor larger than one chunk ever lives (Liger-Kernel's and torchtitan's approach).
The backward pass only scales the stored gradients by the incoming gradient, so the gradients
are exact: the same softmax-minus-one-hot as autograd's, summed in a different order.

Precision follows today's plain path: the matmul runs in the autocast dtype when autocast is on
(else in the inputs' common dtype), the logits are upcast to fp32 for the log-softmax, and the
gradients are computed in fp32 and cast to the matmul dtype before the two backward matmuls.
`linear_cross_entropy_plain` is that plain path, kept as the reference and for chunk_size=0.
"""

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100     # F.cross_entropy's default: targets equal to it add no loss, no gradient
REDUCTIONS = ("mean", "sum", "none")


def linear_cross_entropy_plain(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                               reduction: str = "mean") -> torch.Tensor:
    """The unfused reference: whole [N, V] logits, then fp32 cross-entropy."""
    logits = F.linear(hidden, weight).float()
    return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction=reduction)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk_size: int, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of `targets` [N] under logits `hidden` [N, C] @ `weight` [V, C]^T, computed
    `chunk_size` tokens at a time (0: the plain whole-logits path). Targets equal to -100 are
    ignored; "mean" divides by the number of the others, like F.cross_entropy.

    Example:
        >>> loss = linear_cross_entropy(h.flatten(0, 1), model.head.weight, y.flatten(), 1024)
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"linear_cross_entropy: reduction must be one of {REDUCTIONS}, got "
                         f"{reduction!r}")
    if chunk_size < 0:
        raise ValueError(f"linear_cross_entropy: chunk_size must be >= 0 (0 = no chunking), got "
                         f"{chunk_size}")
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(f"linear_cross_entropy: hidden must be [N, C] and targets [N], got "
                         f"{tuple(hidden.shape)} and {tuple(targets.shape)}")
    if chunk_size == 0:
        return linear_cross_entropy_plain(hidden, weight, targets, reduction)
    matmul_dtype = _matmul_dtype(hidden, weight)
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    if reduction == "none" or not needs_grad:
        with torch.autocast(hidden.device.type, enabled=False):
            losses = _chunked_losses(hidden, weight, targets, chunk_size, matmul_dtype)
        if reduction == "none":
            return losses
        total = losses.sum()
        return total if reduction == "sum" else total / (targets != IGNORE_INDEX).sum()
    return _ChunkedLinearCrossEntropy.apply(hidden, weight, targets, chunk_size, matmul_dtype,
                                            reduction == "mean")


def _matmul_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype F.linear would compute in here: the autocast dtype, or the inputs' common one."""
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return torch.promote_types(hidden.dtype, weight.dtype)


def _chunk_softmax_and_losses(hidden_chunk, weight_mm, targets_chunk, matmul_dtype):
    """One chunk: its softmax [c, V] in fp32 (computed in the logits' own buffer, so a chunk
    holds one [c, V] fp32 tensor), the loss per row (0 where ignored), the ignored rows and the
    targets with ignored ones replaced by a valid index."""
    logits = (hidden_chunk.to(matmul_dtype) @ weight_mm.t()).float()
    ignored = targets_chunk == IGNORE_INDEX
    safe_targets = targets_chunk.masked_fill(ignored, 0)
    logits.sub_(logits.amax(dim=-1, keepdim=True))           # shift by the row max: exp <= 1
    target_logit = logits.gather(1, safe_targets[:, None]).squeeze(1)
    probs = logits.exp_()
    sum_exp = probs.sum(dim=-1)
    losses = (sum_exp.log() - target_logit).masked_fill(ignored, 0.0)
    probs.div_(sum_exp[:, None])
    return probs, losses, ignored, safe_targets


def _chunked_losses(hidden, weight, targets, chunk_size, matmul_dtype) -> torch.Tensor:
    weight_mm = weight.to(matmul_dtype)
    losses = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.shape[0], chunk_size):
        end = start + chunk_size
        losses[start:end] = _chunk_softmax_and_losses(hidden[start:end], weight_mm,
                                                      targets[start:end], matmul_dtype)[1]
    return losses


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Forward computes the loss and both gradients chunk by chunk; backward scales them."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size, matmul_dtype, mean):
        with torch.autocast(hidden.device.type, enabled=False):
            weight_mm = weight.to(matmul_dtype)
            count = (targets != IGNORE_INDEX).sum()
            # d(mean)/d(loss_i) = 1/count; a division by zero gives NaN, as F.cross_entropy does
            scale = 1.0 / count.float() if mean else torch.ones((), device=hidden.device)
            grad_hidden = torch.empty_like(hidden) if hidden.requires_grad else None
            grad_weight = (torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
                           if weight.requires_grad else None)
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            for start in range(0, hidden.shape[0], chunk_size):
                end = start + chunk_size
                hidden_chunk = hidden[start:end]
                grad_logits, losses, ignored, safe_targets = _chunk_softmax_and_losses(
                    hidden_chunk, weight_mm, targets[start:end], matmul_dtype)
                total += losses.sum()
                # d loss_i / d logits_i = softmax_i - onehot(target_i), in the softmax's buffer
                rows = torch.arange(grad_logits.shape[0], device=grad_logits.device)
                grad_logits[rows, safe_targets] -= 1.0
                grad_logits.mul_((~ignored)[:, None] * scale)
                grad_logits_mm = grad_logits.to(matmul_dtype)
                del grad_logits
                if grad_hidden is not None:
                    grad_hidden[start:end] = grad_logits_mm @ weight_mm
                if grad_weight is not None and matmul_dtype == torch.float32:
                    grad_weight.addmm_(grad_logits_mm.t(), hidden_chunk.float())  # no V x C temporary
                elif grad_weight is not None:
                    grad_weight += (grad_logits_mm.t() @ hidden_chunk.to(matmul_dtype)).float()
        # plain attributes, not save_for_backward: backward hands these very tensors to autograd,
        # which then takes them as .grad without a copy (no second V x C or N x C buffer)
        ctx.grad_hidden, ctx.grad_weight, ctx.weight_dtype = grad_hidden, grad_weight, weight.dtype
        return total * scale

    @staticmethod
    def backward(ctx, grad_output):
        if ctx.grad_weight is None and ctx.grad_hidden is None:
            raise RuntimeError("linear_cross_entropy: its gradients were computed in the forward "
                               "pass and handed out once; backward through it twice "
                               "(retain_graph=True) is not supported")
        grad_hidden, grad_weight = ctx.grad_hidden, ctx.grad_weight
        ctx.grad_hidden = ctx.grad_weight = None
        if grad_hidden is not None:
            grad_hidden.mul_(grad_output.to(grad_hidden.dtype))
        if grad_weight is not None:
            grad_weight = grad_weight.mul_(grad_output).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None, None, None
