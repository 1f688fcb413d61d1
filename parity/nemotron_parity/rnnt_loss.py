"""A vectorised RNN-T loss in torch, for training the demo model on a CPU.

NeMo's RNN-T losses (numba and pytorch) loop over time x labels in Python on the CPU (seconds per batch). This
one loops over time only: along a row t of the lattice the forward variable is a log-space prefix sum,

    alpha[t, u] = logaddexp(alpha[t-1, u] + blank[t-1, u],  alpha[t, u-1] + emit[t, u-1])
                = E[t, u] + logcumsumexp_k<=u (a[k] - E[t, k]),   a[k] = alpha[t-1, k] + blank[t-1, k],
                  E[t, u] = sum_{j<u} emit[t, j]

so each row is one `logcumsumexp`, differentiable by autograd. Checked against NeMo's RNNTLoss in the tests.
"""
from __future__ import annotations

import torch

_NEG = -1.0e30  # log(0) stand-in: finite so that autograd through logcumsumexp stays NaN-free


def rnnt_loss(
    logits: torch.Tensor,  # [B, T, U+1, V+1] joint outputs (unnormalised)
    targets: torch.Tensor,  # [B, U] int64 labels (padding anything in range)
    logit_lengths: torch.Tensor,  # [B] valid frames
    target_lengths: torch.Tensor,  # [B] valid labels
    blank: int,
) -> torch.Tensor:
    """Negative log-likelihood of each target sequence -> [B] (no reduction)."""
    b, t_max, u1, _ = logits.shape
    logp = logits.float().log_softmax(dim=-1)
    blank_lp = logp[..., blank]  # [B, T, U+1]
    u = u1 - 1
    if u > 0:
        emit_lp = torch.gather(logp[:, :, :u], 3, targets[:, None, :u, None].expand(b, t_max, u, 1)).squeeze(3)
    else:
        emit_lp = logp.new_zeros(b, t_max, 0)
    # E[t, u] = sum of the first u emission log-probs on row t: [B, T, U+1]
    e = torch.cat([emit_lp.new_zeros(b, t_max, 1), emit_lp.cumsum(dim=2)], dim=2)
    a = torch.full((b, u1), _NEG, dtype=logp.dtype, device=logp.device)
    a[:, 0] = 0.0
    rows = []
    for t in range(t_max):
        alpha_t = e[:, t] + torch.logcumsumexp(a - e[:, t], dim=1)  # [B, U+1]
        rows.append(alpha_t)
        a = alpha_t + blank_lp[:, t]
    alpha = torch.stack(rows, dim=1)  # [B, T, U+1]
    bi = torch.arange(b, device=logits.device)
    last_t = (logit_lengths - 1).clamp(min=0)
    ll = alpha[bi, last_t, target_lengths] + blank_lp[bi, last_t, target_lengths]
    return -ll
