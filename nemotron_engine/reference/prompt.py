"""The language prompt of prompt-conditioned checkpoints (NeMo 3.0 `PromptStreamingMixin._apply_prompt_to_encoded`,
which `conformer_stream_step` applies to the encoder's output before the joint).

Per encoder frame x [D] of a stream whose language has one-hot index p:
    z = [x | onehot(p)]                       [D + P]  (the frame first, then the one-hot of width num_prompts)
    y = W2 relu(W1 z + b1) + b2               [D]      (W1: [2D, D + P], W2: [D, 2D]; NeMo's prompt_kernel)
The language is per stream here (NeMo sets one for the whole model with `set_inference_prompt`, so a batch of
NeMo's is one language): each stream's frames equal NeMo's streaming of that stream alone in its language.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .linear import linear as ref_linear


def prompt_project(
    x: torch.Tensor,  # [B, T, D] encoder frames
    prompt: torch.Tensor,  # [B] int64 each stream's one-hot index, in [0, num_prompts)
    w: dict,  # engine keys under "prompt.": w1 [2D, D + P], b1 [2D], w2 [D, 2D], b2 [D]
    num_prompts: int,
    linear=ref_linear,
) -> torch.Tensor:
    """The prompt MLP over [frame | one-hot] -> [B, T, D]. `linear` computes the products (a backend's own)."""
    b, t, _ = x.shape
    onehot = F.one_hot(prompt, num_prompts).to(x.dtype)  # [B, P]
    z = torch.cat([x, onehot.unsqueeze(1).expand(b, t, num_prompts)], dim=-1)  # [B, T, D + P]
    return linear(torch.relu(linear(z, w, "w1", "b1")), w, "w2", "b2")
