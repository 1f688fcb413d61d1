"""The paged stream cache: one pool per engine, allocated once, holding every stream's state.

- Attention keys and values, *projected*, per layer, in pages: `k[L, P, page_size, D]`, `v[L, P, page_size, D]`.
  A stream's logical frame f lives in page `table[s, (f // page_size) % table_width]`, row
  `f % page_size`: the left-context window slides by overwriting the oldest rows, never by copying. Each stream
  holds the pages its own lookahead needs, n = ceil((C + r + 1) / page_size): its C cached frames plus one chunk
  being written, so a kernel may write the chunk's rows while reading the window. Its table row is its n pages
  repeated: `table_width` is a common multiple of every lookahead's n, so the row is a ring of n pages (a period
  of n x page_size frames) whatever n is, and every reader (the kernels, `locate`) takes the same modulus.
- Fixed slots per stream: the conv cache `conv[L, S, D, K-1]`, the decoder state (LSTM `h`, `c`
  `[layers, S, H]`, last label `[S]`, projected decoder output `pred[S, J]`), the frame position of the next chunk
  `frames[S]` (padded frames included), the last 9 mel frames `mel[S, 9, n_mels]` (the next chunk's pre-encode
  cache) and, on the host, the stream's raw audio in a ring `pcm[S, ring + mirror]` (sample i of the stream at
  i % ring; after its end, a mirror of up to `mirror` samples of its head, so that any span of up to `mirror`
  samples starting anywhere in the ring is contiguous: a step reads each stream's span as one row of a strided view;
  pushes write the ring only, and the step copies the head into the mirror for the spans that cross the ring's end,
  about once a revolution per stream).
Opening a stream takes a slot and its pages from free lists and clears them; `reset` clears them again for a new
utterance; closing returns them. None of these allocates or moves another stream's data.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .config import PRE_ENCODE_CACHE

PAGE_SIZE = 16


@dataclass
class MemoryReport:
    bytes_per_stream: int  # pool bytes per slot (its share of the pages, conv cache, decoder state, audio ring)
    max_streams: int  # streams this pool holds
    pool_bytes: int  # the whole pool, allocated at start-up
    page_size: int
    pages_per_stream: int  # pages of the longest lookahead (the most a stream takes)
    # per lookahead (ms): the pages a stream of that lookahead takes, and its bytes (its pages, its slot's fixed
    # state and its table row): a low-lookahead stream takes fewer pages
    pages_by_lookahead_ms: dict = field(default_factory=dict)
    bytes_by_lookahead_ms: dict = field(default_factory=dict)
    pages: int = 0  # pages in the pool
    pages_free: int = 0  # pages no open stream holds

    def streams_for_budget(self, budget_bytes: int, lookahead_ms: int | None = None) -> int:
        """Streams that fit in budget_bytes, all at lookahead_ms (None: the longest lookahead)."""
        per = self.bytes_per_stream if lookahead_ms is None else self.bytes_by_lookahead_ms[lookahead_ms]
        return budget_bytes // per


def pages_per_stream(cfg, page_size: int = PAGE_SIZE, r: int | None = None) -> int:
    """Pages for C cached frames plus a chunk of lookahead r (r + 1 frames; None: the longest lookahead)."""
    r = max(cfg.lookaheads) if r is None else r
    return math.ceil((cfg.left_context + r + 1) / page_size)


def table_width(cfg, page_size: int = PAGE_SIZE) -> int:
    """Entries of a stream's page-table row: the least common multiple of every lookahead's pages, so that a stream's
    own pages repeated fill the row exactly (its ring's period stays n x page_size frames)."""
    return math.lcm(*(pages_per_stream(cfg, page_size, r) for r in cfg.lookaheads))


def bytes_per_stream(cfg, dtype: torch.dtype, page_size: int = PAGE_SIZE, pcm_ring: int = 0,
                     pcm_mirror: int = 0, r: int | None = None) -> int:
    """Pool bytes per stream of lookahead r (None: the longest), device and host together."""
    e = torch.empty(0, dtype=dtype).element_size()
    kv = 2 * cfg.n_layers * pages_per_stream(cfg, page_size, r) * page_size * cfg.d_model * e
    conv = cfg.n_layers * cfg.d_model * (cfg.conv_kernel_size - 1) * e
    # h, c, pred, label, frames, prompt
    dec = (2 * cfg.pred_rnn_layers * cfg.pred_hidden + cfg.joint_hidden) * e + 8 + 8 + 8
    page_table = table_width(cfg, page_size) * 8
    mel = PRE_ENCODE_CACHE * cfg.n_mels * 4
    return kv + conv + dec + page_table + mel + (pcm_ring + pcm_mirror) * 4


class StreamCache:
    """Preallocated state for up to `max_streams` streams (see the module docstring)."""

    def __init__(self, cfg, max_streams: int, dtype: torch.dtype, device="cpu", page_size: int = PAGE_SIZE,
                 pcm_ring: int = 0, pcm_mirror: int = 0, max_pages: int | None = None, scratch_slot: bool = False):
        """max_pages: pages in the pool (default: max_streams x the longest lookahead's pages, so that every slot can
        hold a stream of any lookahead); fewer hold as many low-lookahead streams in less memory, and `open` raises
        when the free pages do not cover a stream's lookahead.
        scratch_slot: one more slot on the device (`scratch`, index max_streams, with the pages of the longest
        lookahead), which no stream ever takes: the rows that pad a batch to a fixed size (graphs.py) read and write
        there. It has no audio ring (pcm stays [max_streams, ...])."""
        if max_streams < 1:
            raise ValueError(f"max_streams must be at least 1, got {max_streams}")
        self.cfg = cfg
        self.dtype = dtype
        self.max_streams = max_streams
        self.page_size = page_size
        self.pages_per_stream = pages_per_stream(cfg, page_size)  # the most a stream takes
        self.table_width = table_width(cfg, page_size)
        n_pages = max_streams * self.pages_per_stream if max_pages is None else max_pages
        if n_pages < pages_per_stream(cfg, page_size, min(cfg.lookaheads)):
            raise ValueError(f"max_pages={n_pages} holds no stream (a stream takes at least "
                             f"{pages_per_stream(cfg, page_size, min(cfg.lookaheads))} pages)")
        self.n_pages = n_pages  # the streams' pages (the scratch slot's come after them)
        self.scratch = max_streams if scratch_slot else None
        rows = max_streams + (1 if scratch_slot else 0)  # slots on the device
        L, D, K = cfg.n_layers, cfg.d_model, cfg.conv_kernel_size
        kw = dict(dtype=dtype, device=device)
        extra = self.pages_per_stream if scratch_slot else 0
        self.k = torch.zeros(L, n_pages + extra, page_size, D, **kw)  # [L, P, page_size, D]
        self.v = torch.zeros(L, n_pages + extra, page_size, D, **kw)
        self.conv = torch.zeros(L, rows, D, K - 1, **kw)  # [L, S, D, K-1]
        self.h = torch.zeros(cfg.pred_rnn_layers, rows, cfg.pred_hidden, **kw)  # [layers, S, H]
        self.c = torch.zeros(cfg.pred_rnn_layers, rows, cfg.pred_hidden, **kw)
        self.pred = torch.zeros(rows, cfg.joint_hidden, **kw)  # [S, J]
        self.label = torch.zeros(rows, dtype=torch.int64, device=device)  # [S]
        self.frames = torch.zeros(rows, dtype=torch.int64, device=device)  # [S] next chunk's frame position
        self.prompt = torch.zeros(rows, dtype=torch.int64, device=device)  # [S] language index (prompt models)
        self.mel = torch.zeros(rows, PRE_ENCODE_CACHE, cfg.n_mels, device=device)  # [S, 9, n_mels] float32
        # [S, ring + mirror] float32 raw audio on the host (pinned, for one asynchronous copy per step, when a GPU
        # is there)
        if pcm_mirror > pcm_ring:
            raise ValueError(f"pcm_mirror ({pcm_mirror}) must not exceed pcm_ring ({pcm_ring})")
        pin = torch.device(device).type == "cuda"
        self.pcm = torch.zeros(max_streams, pcm_ring + pcm_mirror, pin_memory=pin)
        self.pcm_ring = pcm_ring
        self.pcm_mirror = pcm_mirror
        self.table = torch.zeros(rows, self.table_width, dtype=torch.int64, device=device)
        self._pages: list[list[int]] = [[] for _ in range(rows)]  # each slot's own pages (its ring, in order)
        self._window = self.k.new_empty(2, 0, D)  # gather_window's workspace
        self._free_slots = list(range(max_streams - 1, -1, -1))
        self._free_pages = list(range(n_pages - 1, -1, -1))
        if scratch_slot:  # the last pages, its own for good
            pages = list(range(n_pages, n_pages + extra))
            self._pages[self.scratch] = pages
            self.table[self.scratch] = torch.tensor(pages * (self.table_width // extra), dtype=torch.int64,
                                                    device=device)

    # ---- slots -----------------------------------------------------------------------------------------------
    @property
    def free_slots(self) -> int:
        return len(self._free_slots)

    def open(self, dec_after_sos, r: int | None = None) -> int:
        """Take a slot and the pages of a stream of lookahead r (None: the longest), clear them (`reset`); returns
        the slot."""
        if not self._free_slots:
            raise RuntimeError(
                f"no free stream slot: all {self.max_streams} are in use (max_streams={self.max_streams}); "
                "close a stream or create the engine with a larger max_streams / memory budget")
        n = pages_per_stream(self.cfg, self.page_size, r)
        if len(self._free_pages) < n:
            raise RuntimeError(f"no free pages: a stream of lookahead {r} takes {n} pages, {len(self._free_pages)} of "
                               f"the pool's {self.n_pages} are free; close a stream or create the engine with "
                               "more pages (max_pages)")
        s = self._free_slots.pop()
        pages = [self._free_pages.pop() for _ in range(n)]
        self._pages[s] = pages
        self.table[s] = torch.tensor(pages * (self.table_width // n), dtype=torch.int64, device=self.table.device)
        self.reset(s, dec_after_sos)
        return s

    def pages_of(self, s: int) -> list[int]:
        """The pages slot s holds (its ring, in order)."""
        return list(self._pages[s])

    def reset(self, s: int, dec_after_sos) -> None:
        """Clear slot s for a fresh utterance: pages, conv cache, mel cache and frame position zero, decoder state after
        SOS. Its audio ring is left as it is (it holds the samples of the next utterance)."""
        p = self.table[s, : len(self._pages[s])]
        # stale rows of a previous owner are masked, but must not be NaN/Inf (0 x NaN = NaN in attn @ V)
        self.k[:, p] = 0
        self.v[:, p] = 0
        self.conv[:, s] = 0
        self.h[:, s] = dec_after_sos.h[:, 0]
        self.c[:, s] = dec_after_sos.c[:, 0]
        self.pred[s] = dec_after_sos.pred[0]
        self.label[s] = dec_after_sos.label[0]
        self.frames[s] = 0
        self.mel[s] = 0

    def close(self, s: int) -> None:
        self._free_pages.extend(self._pages[s])
        self._pages[s] = []
        self._free_slots.append(s)

    # ---- rows ------------------------------------------------------------------------------------------------
    def locate(self, slots: torch.Tensor, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(page, row) of logical frames [B, N] of streams `slots` [B]; negative frames map to any row."""
        f = frames.clamp(min=0)
        page = torch.gather(self.table[slots], 1, (f // self.page_size) % self.table_width)
        return page, f % self.page_size

    def rows(self, slots: torch.Tensor, start: torch.Tensor, n: int) -> torch.Tensor:
        """Row indices [B, n] of frames start .. start + n - 1 of streams `slots` in a layer's pages viewed as
        [P x page_size, D] (negative frames map to any row, as in `locate`). The same for every layer: a step
        computes them once (ops._paged)."""
        frames = start.unsqueeze(1) + torch.arange(n, device=start.device)  # [B, n]
        page, row = self.locate(slots, frames)
        return page * self.page_size + row

    def gather_rows(self, layer: int, idx: torch.Tensor, reuse: bool = False):
        """Keys and values of the rows idx [B, n] (`rows`) -> ([B, n, D], [B, n, D]); reuse as in gather_window."""
        b, n = idx.shape
        idx = idx.flatten()
        d = self.k.shape[-1]
        if not reuse:
            k, v = self.k.new_empty(idx.numel(), d), self.v.new_empty(idx.numel(), d)
        else:
            if self._window.shape[1] < idx.numel():
                self._window = self.k.new_empty(2, idx.numel(), d)
            k, v = self._window[0, : idx.numel()], self._window[1, : idx.numel()]
        torch.index_select(self.k[layer].view(-1, d), 0, idx, out=k)
        torch.index_select(self.v[layer].view(-1, d), 0, idx, out=v)
        return k.view(b, n, d), v.view(b, n, d)

    def write_at(self, layer: int, idx: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write k, v [B, T, D] at the rows idx [B, T] (`rows`)."""
        d = self.k.shape[-1]
        flat = idx.flatten()
        self.k[layer].view(-1, d).index_copy_(0, flat, k.reshape(-1, d))
        self.v[layer].view(-1, d).index_copy_(0, flat, v.reshape(-1, d))

    def gather_window(self, layer: int, slots: torch.Tensor, start: torch.Tensor, n: int | None = None,
                      reuse: bool = False):
        """Keys and values of frames start .. start + n - 1 -> ([B, n, D], [B, n, D]); n defaults to C (the
        attention window before a chunk; with n = C + T, the window and the chunk written just before).

        reuse=False returns new tensors. reuse=True (the engine's step) writes the rows into a workspace the pool
        keeps, grown on demand and shared by every layer and step, so that no new pages are faulted in per layer:
        the views it returns are overwritten by the next reuse=True call.
        """
        n = self.cfg.left_context if n is None else n
        return self.gather_rows(layer, self.rows(slots, start, n), reuse)

    def write_rows(self, layer: int, slots: torch.Tensor, start: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Write a chunk's keys and values k, v [B, T, D] at frames start .. start + T - 1."""
        self.write_at(layer, self.rows(slots, start, k.shape[1]), k, v)

    def memory_report(self) -> MemoryReport:
        pool = sum(t.numel() * t.element_size() for t in (self.k, self.v, self.conv, self.h, self.c, self.pred,
                                                          self.label, self.frames, self.prompt, self.table, self.mel,
                                                          self.pcm))
        cfg, ps = self.cfg, self.page_size
        ms = {r: (r + 1) * cfg.frame_ms for r in sorted(cfg.lookaheads)}
        return MemoryReport(pool // self.max_streams, self.max_streams, pool, ps, self.pages_per_stream,
                            {ms[r]: pages_per_stream(cfg, ps, r) for r in ms},
                            {ms[r]: bytes_per_stream(cfg, self.dtype, ps, self.pcm_ring, self.pcm_mirror, r)
                             for r in ms},
                            self.n_pages, len(self._free_pages))
