"""The paged stream cache: the paged encoder step equals the dense one; slots and pages are reused cleanly."""
from dataclasses import dataclass

import pytest
import torch

import models
from nemotron_engine.cache import StreamCache, bytes_per_stream
from nemotron_engine.config import DROP_EXTRA_PRE_ENCODED
from nemotron_engine.encoder import encoder_step, frontend, layer_step
from nemotron_engine.model import Model
from nemotron_engine.ops import TORCH
from nemotron_engine.reference.attention import attention_mask, rel_attention
from nemotron_engine.reference.conv_module import glu_conv_norm
from nemotron_engine.reference.decoder import initial_state


@dataclass
class EncoderState:
    """Dense per-stream encoder caches: what the paged pool holds, one plain tensor per quantity."""

    k: torch.Tensor  # [L, B, C, D] projected keys of the last C frames (oldest first)
    v: torch.Tensor  # [L, B, C, D] projected values
    conv: torch.Tensor  # [L, B, D, K-1] last K-1 GLU outputs
    filled: torch.Tensor  # [B] int64, how many of the C cache rows hold real frames (NeMo cache_last_channel_len)

    @staticmethod
    def zeros(model, batch: int) -> "EncoderState":
        c = model.cfg
        L, C, D, K = c.n_layers, c.left_context, c.d_model, c.conv_kernel_size
        return EncoderState(torch.zeros(L, batch, C, D), torch.zeros(L, batch, C, D), torch.zeros(L, batch, D, K - 1),
                            torch.zeros(batch, dtype=torch.int64))

    def select(self, idx: list[int]) -> "EncoderState":
        return EncoderState(self.k[:, idx], self.v[:, idx], self.conv[:, idx], self.filled[idx])


def dense_encoder_step(model, mel, mel_len, state: EncoderState, r: int, first: bool):
    """The streaming step on dense caches, NeMo's cache update written out: the layer step of the engine
    (encoder.layer_step) with the window [cache | chunk] concatenated and the last C rows kept."""
    cfg = model.cfg
    C = cfg.left_context
    x, n = frontend(TORCH, model, mel, mel_len, 0 if first else DROP_EXTRA_PRE_ENCODED)
    t = x.shape[1]
    valid = torch.arange(t).unsqueeze(0) < n.unsqueeze(1)  # [B, T]
    masked = attention_mask(t, C, state.filled, valid, C, r)
    ks, vs, convs = [], [], []
    for i, w in enumerate(model.layers):
        def attend(q, k, v, i=i, w=w):
            k, v = torch.cat([state.k[i], k], dim=1), torch.cat([state.v[i], v], dim=1)  # [B, C + T, D]
            ks.append(k[:, -C:])
            vs.append(v[:, -C:])
            return rel_attention(q, k, v, model.pos[i], model.rel_lo, w["att.pos_bias_u"], w["att.pos_bias_v"], masked)

        def conv(a, i=i, w=w):
            y, cache = glu_conv_norm(a, state.conv[i], ~valid, w["conv"], cfg.conv_norm_type, cfg.batch_norm_eps)
            convs.append(cache)
            return y

        x = layer_step(TORCH, x, w, cfg.layer_norm_eps, attend, conv)
    # NeMo: cache_last_channel_len = clamp(len + T, max=C), counting the chunk's padded length T
    filled = (state.filled + t).clamp(max=C)
    return x, n, EncoderState(torch.stack(ks), torch.stack(vs), torch.stack(convs), filled)


@pytest.fixture(scope="module")
def model():
    return Model.load(models.nemo_model("odd_heads")[2])


def test_paged_step_equals_dense_step(model):
    """Streams at different fill levels (first chunk, partly and fully filled windows), pages from a shuffled
    pool whose unused rows are NaN: every step's output is bit-identical to the dense reference step."""
    torch.manual_seed(0)
    cfg = model.cfg
    r = 1
    cache = StreamCache(cfg, max_streams=5, dtype=torch.float32)
    cache._free_pages = torch.randperm(cache.k.shape[1]).tolist()
    cache.k.fill_(float("nan"))
    cache.v.fill_(float("nan"))
    sos = initial_state(model, 1)
    slots = [cache.open(sos, r) for _ in range(3)]  # the pages of lookahead r only: a ring of C + r + 1 rows or more
    dense = [EncoderState.zeros(model, 1) for _ in slots]
    # stream i joins at step i: fill levels differ within every batch
    for step in range(60):
        active = [i for i in range(3) if step >= i * 7]
        first = [i for i in active if step == i * 7]
        later = [i for i in active if step > i * 7]
        for group, is_first in ((first, True), (later, False)):
            if not group:
                continue
            t_in = cfg.first_chunk_mel(r) if is_first else 9 + cfg.chunk_mel(r)
            mel = torch.randn(len(group), t_in, cfg.n_mels) * 3 - 8
            n = torch.full((len(group),), t_in)
            out_p, _ = encoder_step(model, TORCH, mel, n, cache, torch.tensor([slots[i] for i in group]), r, is_first)
            # the dense reference on the same batch (matmul rounding depends on the batch shape)
            st = EncoderState(*(torch.cat([getattr(dense[i], f) for i in group], dim=1) for f in ("k", "v", "conv")),
                              torch.cat([dense[i].filled for i in group]))
            out_d, _, st = dense_encoder_step(model, mel, n, st, r, is_first)
            for j, i in enumerate(group):
                dense[i] = st.select([j])
                assert torch.equal(out_p[j], out_d[j]), f"step {step} stream {i}"
                assert torch.equal(cache.conv[:, slots[i]], dense[i].conv[:, 0])


def test_slots_and_pages_are_reused(model):
    cfg = model.cfg
    cache = StreamCache(cfg, max_streams=2, dtype=torch.float32)
    sos = initial_state(model, 1)
    a = cache.open(sos)
    b = cache.open(sos)
    with pytest.raises(RuntimeError, match="no free stream slot: all 2 are in use"):
        cache.open(sos)
    pages_a = set(cache.table[a].tolist())
    assert not pages_a & set(cache.table[b].tolist())
    cache.k[:, cache.table[a]] = float("nan")
    cache.close(a)
    c = cache.open(sos)
    assert set(cache.table[c].tolist()) == pages_a
    assert not torch.isnan(cache.k[:, cache.table[c]]).any(), "pages are cleared on open"
    report = cache.memory_report()
    assert report.max_streams == 2 and report.bytes_per_stream * 2 == report.pool_bytes
    assert report.bytes_per_stream >= bytes_per_stream(cfg, torch.float32) - 64


def test_gather_window_reuse(model):
    """reuse=False returns tensors of their own; reuse=True the same values in the pool's workspace, which the next
    reuse=True gather overwrites."""
    torch.manual_seed(1)
    cfg = model.cfg
    cache = StreamCache(cfg, max_streams=2, dtype=torch.float32)
    sos = initial_state(model, 1)
    slots = torch.tensor([cache.open(sos), cache.open(sos)])
    C = cfg.left_context
    for layer in range(2):
        k = torch.randn(2, C, cfg.d_model)
        cache.write_rows(layer, slots, torch.zeros(2, dtype=torch.int64), k, -k)
    start = torch.zeros(2, dtype=torch.int64)
    own = [cache.gather_window(layer, slots, start) for layer in range(2)]
    assert not torch.equal(own[0][0], own[1][0])  # the first gather was not overwritten by the second
    for layer in range(2):
        k, v = cache.gather_window(layer, slots, start, reuse=True)
        assert torch.equal(k, own[layer][0]) and torch.equal(v, own[layer][1])
    k0, _ = cache.gather_window(0, slots, start, reuse=True)
    cache.gather_window(1, slots, start, reuse=True)
    assert torch.equal(k0, own[1][0])  # the workspace's views show the latest gather


def test_window_and_lookaheads_come_from_the_config():
    """The pool's pages per stream follow the checkpoint's left context and longest lookahead (C + R_max + 1 rows):
    5 pages of 16 for Nemotron 3.5's C = 56, R_max = 13 (70 rows), 6 for Nemotron's C = 70 (84 rows); the bytes per
    stream and the memory report shrink with the window."""
    from nemotron_engine.cache import pages_per_stream
    from nemotron_engine.config import ModelConfig

    small = dict(d_model=64, n_layers=2, n_heads=4, pred_hidden=16, joint_hidden=16, vocab_size=13088,
                 blank_id=13088)
    nemotron = ModelConfig(**small)
    family = ModelConfig(**small, att_context_size=[[56, 13], [56, 6], [56, 3], [56, 1], [56, 0]])
    assert (family.left_context, family.lookaheads) == (56, [13, 6, 3, 1, 0])
    assert [family.lookahead_from_ms(ms) for ms in (80, 160, 320, 560, 1120)] == [0, 1, 3, 6, 13]
    assert (pages_per_stream(family), pages_per_stream(nemotron)) == (5, 6)
    per_family, per_nemotron = bytes_per_stream(family, torch.float32), bytes_per_stream(nemotron, torch.float32)
    # a page of K and V per layer; the table rows: 20 entries (lcm of 4 and 5 pages) against 30 (of 5 and 6)
    assert per_nemotron - per_family == 2 * 2 * 16 * 64 * 4 + (30 - 20) * 8
    report = StreamCache(family, 3, torch.float32).memory_report()
    assert report.pages_per_stream == 5 and report.bytes_per_stream == per_family


def test_pages_follow_each_streams_lookahead(model):
    """A stream takes the pages of its own lookahead, ceil((C + r + 1) / 16): Nemotron 3.5's C = 56 gives 4 pages at
    80-560 ms and 5 at 1120 ms; the memory report gives each lookahead's pages and bytes. With fewer pages than the
    slots could hold at the longest lookahead, low-lookahead streams fill every slot and a long one waits for pages.
    The table row repeats the stream's own pages, so every frame of a window maps to its own row."""
    from nemotron_engine.cache import pages_per_stream
    from nemotron_engine.config import ModelConfig

    small = dict(d_model=64, n_layers=2, n_heads=4, pred_hidden=16, joint_hidden=16, vocab_size=13088,
                 blank_id=13088)
    family = ModelConfig(**small, att_context_size=[[56, 13], [56, 6], [56, 3], [56, 1], [56, 0]])
    assert [pages_per_stream(family, r=r) for r in (0, 1, 3, 6, 13)] == [4, 4, 4, 4, 5]
    report = StreamCache(family, 3, torch.float32).memory_report()
    assert report.pages_by_lookahead_ms == {80: 4, 160: 4, 320: 4, 560: 4, 1120: 5}
    page_bytes = 2 * 2 * 16 * 64 * 4
    assert report.bytes_by_lookahead_ms[1120] - report.bytes_by_lookahead_ms[80] == page_bytes
    assert report.bytes_by_lookahead_ms[1120] == bytes_per_stream(family, torch.float32)
    assert report.streams_for_budget(10 * report.bytes_by_lookahead_ms[80], 80) == 10

    sos = initial_state(model, 1)
    cfg = model.cfg  # C = 70: 5 pages at r = 0, 1, 6 and 6 at r = 13
    cache = StreamCache(cfg, max_streams=3, dtype=torch.float32, max_pages=15)
    assert cache.table_width == 30 and cache.memory_report().pages_free == 15
    slots = [cache.open(sos, 0) for _ in range(3)]
    assert cache.memory_report().pages_free == 0
    for s in slots:
        own = cache.pages_of(s)
        assert len(own) == 5 and cache.table[s].tolist() == own * 6
        frames = torch.arange(1000, 1000 + cfg.left_context + 1).unsqueeze(0)  # a window and a chunk of r = 0
        page, row = cache.locate(torch.tensor([s]), frames)
        assert len(set(zip(page[0].tolist(), row[0].tolist()))) == frames.shape[1], "two frames share a row"
    cache.close(slots[0])
    with pytest.raises(RuntimeError, match="no free pages: a stream of lookahead 13 takes 6 pages, 5 of"):
        cache.open(sos, 13)
    cache.close(slots[1])
    s = cache.open(sos, 13)
    assert len(cache.pages_of(s)) == 6 and cache.memory_report().pages_free == 4
