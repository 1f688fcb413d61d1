"""The RNN-T prediction network, joint and label-looping greedy decoding
(docs/streaming.md#8-greedy-rnn-t-decoding).

Decoder state per stream: LSTM (h, c) per layer, the last emitted label, and the *projected* decoder output
joint.pred(h_top) for that label. A fresh stream starts from one LSTM step on the blank (SOS) label from zero
state: NeMo's label-looping computer looks the blank id up in the embedding (blank_as_pad, its row is whatever the
checkpoint holds; zero when trained with padding_idx).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .linear import linear


@dataclass
class DecoderState:
    h: torch.Tensor  # [layers, B, H]
    c: torch.Tensor  # [layers, B, H]
    label: torch.Tensor  # [B] int64 last emitted label (blank = none yet)
    pred: torch.Tensor  # [B, J] joint.pred(h_top) for that label

    def select(self, idx: list[int]) -> "DecoderState":
        return DecoderState(self.h[:, idx], self.c[:, idx], self.label[idx], self.pred[idx])


def lstm_step(
    x: torch.Tensor,  # [B, E] input embedding
    h: torch.Tensor,  # [layers, B, H]
    c: torch.Tensor,  # [layers, B, H]
    w: dict,  # engine keys under "decoder."
    linear=linear,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the stacked LSTM (PyTorch gate order i, f, g, o) -> (h', c')."""
    hs, cs = [], []
    for layer in range(h.shape[0]):
        gates = (linear(x, w, f"lstm.{layer}.w_ih", f"lstm.{layer}.b_ih")
                 + linear(h[layer], w, f"lstm.{layer}.w_hh", f"lstm.{layer}.b_hh"))
        i, f, g, o = gates.chunk(4, dim=-1)
        c1 = torch.sigmoid(f) * c[layer] + torch.sigmoid(i) * torch.tanh(g)
        h1 = torch.sigmoid(o) * torch.tanh(c1)
        hs.append(h1)
        cs.append(c1)
        x = h1
    return torch.stack(hs), torch.stack(cs)


def predict(labels: torch.Tensor, h: torch.Tensor, c: torch.Tensor, dec: dict, joint: dict, linear=linear):
    """Embed labels [B], one LSTM step, project for the joint -> (pred [B, J], h', c')."""
    h, c = lstm_step(F.embedding(labels, dec["embed"]), h, c, dec, linear)
    return linear(h[-1], joint, "pred.weight", "pred.bias"), h, c


def initial_state(model, batch: int, linear=linear) -> DecoderState:
    """The state after SOS: one LSTM step on the blank label from zeros."""
    cfg = model.cfg
    z = torch.zeros(cfg.pred_rnn_layers, batch, cfg.pred_hidden, dtype=model.dtype, device=model.device)
    blank = torch.full((batch,), cfg.blank_id, dtype=torch.int64, device=model.device)
    pred, h, c = predict(blank, z, z, model.dec, model.joint, linear)
    return DecoderState(h, c, blank.clone(), pred)


def joint_logits(f: torch.Tensor, pred: torch.Tensor, joint: dict, linear=linear) -> torch.Tensor:
    """joint_net(relu(enc_proj + pred_proj)): f [B, J], pred [B, J] -> logits [B, V + 1]."""
    return linear(torch.relu(f + pred), joint, "out.weight", "out.bias")


def greedy_decode(
    model,
    enc: torch.Tensor,  # [B, T, D] encoder frames of this step
    lengths: torch.Tensor,  # [B] valid frames
    state: DecoderState,
    frame_offset: torch.Tensor,  # [B] global index of enc[:, 0]
    linear=linear,
) -> tuple[list[list[int]], list[list[int]], DecoderState]:
    """Greedy RNN-T over the step's frames -> (tokens per stream, global frame per token, new state).

    Frame-synchronous form of NeMo's label-looping greedy: at each frame, argmax of the joint; a blank moves to
    the next frame; a label is emitted (with the frame as its timestamp) and advances the prediction network; after
    max_symbols labels on one frame the frame is left without evaluating a blank. Ties go to the first index
    (torch.max). `linear` computes the products (a backend's own, e.g. the CPU's prepacked ones).
    """
    cfg = model.cfg
    b, t, _ = enc.shape
    f = linear(enc, model.joint, "enc.weight", "enc.bias")  # [B, T, J]
    h, c, label, pred = state.h.clone(), state.c.clone(), state.label.clone(), state.pred.clone()
    tokens: list[list[int]] = [[] for _ in range(b)]
    stamps: list[list[int]] = [[] for _ in range(b)]
    for ti in range(t):
        active = lengths > ti  # [B]
        for _ in range(cfg.max_symbols):
            if not bool(active.any()):
                break
            k = joint_logits(f[:, ti], pred, model.joint, linear).argmax(dim=-1)  # [B]
            emit = active & (k != cfg.blank_id)
            if not bool(emit.any()):
                break
            new_pred, h2, c2 = predict(k.masked_fill(~emit, cfg.blank_id), h, c, model.dec, model.joint, linear)
            sel = emit.nonzero().flatten().tolist()
            for bi in sel:
                tokens[bi].append(int(k[bi]))
                stamps[bi].append(int(frame_offset[bi]) + ti)
            m = emit.view(1, b, 1)
            h = torch.where(m, h2, h)
            c = torch.where(m, c2, c)
            pred = torch.where(emit.view(b, 1), new_pred, pred)
            label = torch.where(emit, k, label)
            active = emit
    return tokens, stamps, DecoderState(h, c, label, pred)
