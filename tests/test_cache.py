"""The paged stream cache: the paged encoder step equals the dense one; slots and pages are reused cleanly."""
import pytest
import torch

import models
from nemotron_engine.cache import StreamCache, bytes_per_stream
from nemotron_engine.model import Model
from nemotron_engine.reference.decoder import initial_state
from nemotron_engine.reference.encoder import EncoderState, encoder_step, encoder_step_paged


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
    slots = [cache.open(sos) for _ in range(3)]
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
            out_p, _ = encoder_step_paged(model, mel, n, cache, torch.tensor([slots[i] for i in group]), r, is_first)
            # the dense reference on the same batch (matmul rounding depends on the batch shape)
            st = EncoderState(*(torch.cat([getattr(dense[i], f) for i in group], dim=1) for f in ("k", "v", "conv")),
                              torch.cat([dense[i].filled for i in group]))
            out_d, _, st = encoder_step(model, mel, n, st, r, is_first)
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
