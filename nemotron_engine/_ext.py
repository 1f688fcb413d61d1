"""The CUDA extension nemotron_engine._C: loading, tensor-facing wrappers, and their pure-torch references.

Nothing here imports _C at `import nemotron_engine` time: `load_extension()` tries once, on first use, and
remembers why it failed (`extension_error()`), e.g. "not built: NEMOTRON_SKIP_CUDA_BUILD was set".
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType
from typing import Optional

import torch

__all__ = [
    "load_extension",
    "extension_error",
    "build_info",
    "rnnt_greedy",
    "rnnt_greedy_ref",
]

_BUILD_INFO = Path(__file__).with_name("_C_build.json")  # written by setup.py next to _C*.so
_NOT_LOADED = object()
_ext: object = _NOT_LOADED
_ext_error: Optional[str] = None


def build_info() -> Optional[dict]:
    """What setup.py recorded about the CUDA build: {"built": bool, "reason" | "cuda_archs" ...}; None if unknown."""
    try:
        return json.loads(_BUILD_INFO.read_text())
    except (OSError, ValueError):
        return None


def load_extension() -> Optional[ModuleType]:
    """Import nemotron_engine._C once; return it, or None (then `extension_error()` says why).

    >>> ext = load_extension()
    >>> ext is None or isinstance(ext.cuda_available(), bool)
    True
    """
    global _ext, _ext_error
    if _ext is _NOT_LOADED:
        try:
            _ext = importlib.import_module("nemotron_engine._C")
            _ext_error = None
        except ImportError as err:
            _ext = None
            info = build_info()
            if isinstance(err, ModuleNotFoundError) and err.name == "nemotron_engine._C":
                if info is not None and not info.get("built", False):
                    _ext_error = f"not built: {info.get('reason', 'unknown reason')}"
                else:
                    _ext_error = ("not built: nemotron_engine._C is missing; reinstall with nvcc available "
                                  "(pip install -e .)")
            else:
                _ext_error = f"import failed: {type(err).__name__}: {err}"
    return _ext  # type: ignore[return-value]


def extension_error() -> Optional[str]:
    """Why `load_extension()` returned None; None when the extension loaded (or was not tried yet)."""
    load_extension()
    return _ext_error


def _require_extension(op: str) -> ModuleType:
    ext = load_extension()
    if ext is None:
        raise RuntimeError(f"{op}: the CUDA extension nemotron_engine._C is unavailable ({_ext_error}); "
                           f"use {op}_ref or the torch backend")
    return ext


def _dtype_code(ext: ModuleType, dtype: torch.dtype) -> int:
    return {torch.float32: ext.DTYPE_FLOAT32, torch.bfloat16: ext.DTYPE_BFLOAT16}[dtype]


def _check_cuda(op: str, name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cuda":
        raise ValueError(f"{op}: {name} must be a CUDA tensor, got device {t.device}; use {op}_ref on the CPU")


def _check_dtype(op: str, name: str, t: torch.Tensor, allowed: tuple[torch.dtype, ...]) -> None:
    if t.dtype not in allowed:
        names = " or ".join(str(d).replace("torch.", "") for d in allowed)
        raise ValueError(f"{op}: {name} must be {names}, got {str(t.dtype).replace('torch.', '')}")


def _check_shape(op: str, name: str, t: torch.Tensor, expected: tuple, what: str) -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{op}: {name} must have shape {what} = {list(expected)}, got {list(t.shape)}")


def rnnt_greedy(f: torch.Tensor, lengths: torch.Tensor, slots: torch.Tensor, frame_offset: torch.Tensor,
                h: torch.Tensor, c: torch.Tensor, pred: torch.Tensor, label: torch.Tensor, dec: dict, joint: dict, *,
                max_symbols: int, blank_id: int, streams_per_block: int = 0, kernel: str = "blocked",
                grid_blocks: int = 0, threads: int = 0
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Greedy RNN-T decoding of one step for B streams in one launch (CUDA kernel); no host synchronisation.

    Per stream b, over frames t < lengths[b] of f[b]: logits = joint.out(relu(f[b, t] + pred)), k = argmax (first
    index on ties); blank moves to the next frame; any other label is emitted with global frame
    frame_offset[b] + t and advances the prediction network (embed, stacked LSTM, joint.pred); after max_symbols
    labels on one frame the frame is left without a blank. The decoder state of stream b lives in the pool at
    slots[b] and is updated in place. Reference: `nemotron_engine.reference.decoder.greedy_decode`; host-sync-free
    torch twin with this signature: `rnnt_greedy_ref`.

    Parameters
    ----------
    f : torch.Tensor
        [B, T, J] joint.enc(encoder output) including its bias; float32 or bfloat16 (the model dtype), contiguous,
        CUDA. Everything below is on the same device.
    lengths : torch.Tensor
        [B] int64: valid frames per stream (clamped to [0, T]; 0 leaves the stream untouched).
    slots : torch.Tensor
        [B] int64, distinct: each stream's pool slot. A slot outside [0, S) gets counts[b] = -1 and no other effect.
    frame_offset : torch.Tensor
        [B] int64: global frame index of f[b, 0] (the timestamps; must stay below 2^31).
    h, c : torch.Tensor
        [L, S, H] the pool's LSTM state, f's dtype, contiguous.
    pred : torch.Tensor
        [S, J] the pool's joint.pred(h_top) of the last label, f's dtype, contiguous.
    label : torch.Tensor
        [S] int64: the pool's last emitted label.
    dec, joint : dict
        model.dec (`embed` [V1, E], `lstm.{l}.w_ih` [4H, E or H], `lstm.{l}.w_hh` [4H, H], `lstm.{l}.b_ih`,
        `lstm.{l}.b_hh` [4H]) and model.joint (`pred.weight` [J, H], `pred.bias` [J], `out.weight` [V1, J],
        `out.bias` [V1]), f's dtype, contiguous.
    max_symbols : int
        Labels per frame at most (>= 1).
    blank_id : int
        The blank class, in [0, V1).
    streams_per_block : int
        0 picks it from B and the device; 1, 2 or 4 forces it (the scalar path, for sizes not multiples of 4,
        always runs 1). With kernel="grid": the streams decoded together per group, 0 (auto), 1, 2, 4 or 8.
    kernel : str
        "blocked" (the default): one block per stream, or per 2 or 4 streams. "grid": every block of the GPU works
        on every stream (a cooperative launch; up to 8 streams in lock step, groups one after another), for few
        streams, where one block per stream leaves the GPU idle and reads every weight from one SM. Both give the
        same results bit for bit; "grid" has been checked under the CPU emulator only (tests/test_decoder_cuda.py),
        not yet on a GPU, so it is not the engine's default.
    grid_blocks, threads : int
        kernel="grid" only: blocks (0: one per SM; at most what can be resident at once) and threads per block
        (0: 256; a multiple of 32, at most 256).

    Returns
    -------
    tokens : torch.Tensor
        [B, T * max_symbols] int32; row b holds counts[b] labels, the rest is unspecified.
    frames : torch.Tensor
        [B, T * max_symbols] int32: the global frame of each label.
    counts : torch.Tensor
        [B] int32: labels emitted per stream; -1 where slots[b] is outside the pool.

    >>> tokens, frames, counts = rnnt_greedy(f, lengths, slots, offsets, cache.h, cache.c, cache.pred,
    ...                                      cache.label, model.dec, model.joint, max_symbols=10, blank_id=1024)
    >>> n = counts.tolist()                          # the one host sync, after the launch
    >>> tokens[0, : n[0]].tolist(), frames[0, : n[0]].tolist()
    """
    op = "rnnt_greedy"
    # shapes, dtypes and layout first (they read no device), then the devices
    if not isinstance(f, torch.Tensor):
        raise TypeError(f"{op}: f must be a torch.Tensor, got {type(f).__name__}")
    _check_dtype(op, "f", f, (torch.float32, torch.bfloat16))
    if f.dim() != 3 or not f.is_contiguous():
        raise ValueError(f"{op}: f must be a contiguous [B, T, J] tensor, got shape {list(f.shape)} with strides "
                         f"{list(f.stride())}")
    b, t, j = f.shape
    for name, x in (("h", h), ("c", c), ("pred", pred)):
        _check_dtype(op, name, x, (f.dtype,))
        if not x.is_contiguous():
            raise ValueError(f"{op}: {name} must be contiguous, got strides {list(x.stride())} for shape "
                             f"{list(x.shape)}")
    if h.dim() != 3 or h.shape[1] == 0:
        raise ValueError(f"{op}: h must have shape [L, S, H] with S >= 1, got {list(h.shape)}")
    layers, s, hidden = h.shape
    _check_shape(op, "c", c, (layers, s, hidden), "[L, S, H] like h")
    _check_shape(op, "pred", pred, (s, j), "[S, J] (S from h, J from f)")
    index_args = (("lengths", lengths, (b,), "[B]"), ("slots", slots, (b,), "[B]"),
                  ("frame_offset", frame_offset, (b,), "[B]"), ("label", label, (s,), "[S]"))
    for name, x, shape, what in index_args:
        _check_dtype(op, name, x, (torch.int64,))
        _check_shape(op, name, x, shape, what)
        if not x.is_contiguous():
            raise ValueError(f"{op}: {name} must be contiguous, got stride {list(x.stride())}")
    if isinstance(max_symbols, bool) or not isinstance(max_symbols, int) or max_symbols < 1:
        raise ValueError(f"{op}: max_symbols must be an int >= 1, got {max_symbols!r}")
    if kernel not in ("blocked", "grid"):
        raise ValueError(f"{op}: kernel must be 'blocked' or 'grid', got {kernel!r}")
    if kernel == "blocked" and streams_per_block not in (0, 1, 2, 4):
        raise ValueError(f"{op}: streams_per_block must be 0 (auto), 1, 2 or 4, got {streams_per_block!r}")
    if kernel == "grid":
        if streams_per_block not in (0, 1, 2, 4, 8):
            raise ValueError(f"{op}: with kernel='grid', streams_per_block (streams per group) must be 0 (auto), 1, 2, "
                             f"4 or 8, got {streams_per_block!r}")
        if isinstance(grid_blocks, bool) or not isinstance(grid_blocks, int) or not 0 <= grid_blocks <= 1024:
            raise ValueError(f"{op}: grid_blocks must be an int in [0, 1024] (0: one block per SM), got "
                             f"{grid_blocks!r}")
        if isinstance(threads, bool) or not isinstance(threads, int) or not (
                threads == 0 or (32 <= threads <= 256 and threads % 32 == 0)):
            raise ValueError(f"{op}: threads must be 0 (auto) or a multiple of 32 in [32, 256], got {threads!r}")
    lstm_names = [f"lstm.{l}.{k}" for l in range(layers) for k in ("w_ih", "w_hh", "b_ih", "b_hh")]
    missing = [n for n in ["embed", *lstm_names] if n not in dec]
    if missing:
        raise ValueError(f"{op}: dec lacks {missing} (h.shape[0] = {layers} LSTM layers); pass model.dec")
    missing = [n for n in ("pred.weight", "pred.bias", "out.weight", "out.bias") if n not in joint]
    if missing:
        raise ValueError(f"{op}: joint lacks {missing}; pass model.joint")
    embed = dec["embed"]
    if embed.dim() != 2:
        raise ValueError(f"{op}: dec['embed'] must have shape [V1, E], got {list(embed.shape)}")
    n_classes, e = embed.shape
    weights = {"dec['embed']": (embed, (n_classes, e), "[V1, E]")}
    for layer in range(layers):
        k_in = e if layer == 0 else hidden
        weights[f"dec['lstm.{layer}.w_ih']"] = (dec[f"lstm.{layer}.w_ih"], (4 * hidden, k_in),
                                                 "[4H, E]" if layer == 0 else "[4H, H]")
        weights[f"dec['lstm.{layer}.w_hh']"] = (dec[f"lstm.{layer}.w_hh"], (4 * hidden, hidden), "[4H, H]")
        weights[f"dec['lstm.{layer}.b_ih']"] = (dec[f"lstm.{layer}.b_ih"], (4 * hidden,), "[4H]")
        weights[f"dec['lstm.{layer}.b_hh']"] = (dec[f"lstm.{layer}.b_hh"], (4 * hidden,), "[4H]")
    weights["joint['pred.weight']"] = (joint["pred.weight"], (j, hidden), "[J, H]")
    weights["joint['pred.bias']"] = (joint["pred.bias"], (j,), "[J]")
    weights["joint['out.weight']"] = (joint["out.weight"], (n_classes, j), "[V1, J]")
    weights["joint['out.bias']"] = (joint["out.bias"], (n_classes,), "[V1]")
    for name, (x, shape, what) in weights.items():
        _check_dtype(op, name, x, (f.dtype,))
        _check_shape(op, name, x, shape, what)
        if not x.is_contiguous():
            raise ValueError(f"{op}: {name} must be contiguous, got strides {list(x.stride())}; call .contiguous()")
    if isinstance(blank_id, bool) or not isinstance(blank_id, int) or not 0 <= blank_id < n_classes:
        raise ValueError(f"{op}: blank_id must be an int in [0, {n_classes}) (dec['embed'] has {n_classes} rows), "
                         f"got {blank_id!r}")
    _check_cuda(op, "f", f)
    dev = f.device
    for name, x in [("h", h), ("c", c), ("pred", pred), *[(n, x) for n, x, _, _ in index_args],
                    *[(n, x) for n, (x, _, _) in weights.items()]]:
        _check_cuda(op, name, x)
        if x.device != dev:
            raise ValueError(f"{op}: {name} is on {x.device} but f is on {dev}; move it to {dev}")
    lstm = [dec[n] for n in lstm_names]
    jw = {n: joint[n] for n in ("pred.weight", "pred.bias", "out.weight", "out.bias")}
    ext = _require_extension(op)
    tokens = torch.empty(b, t * max_symbols, dtype=torch.int32, device=dev)
    frames = torch.empty(b, t * max_symbols, dtype=torch.int32, device=dev)
    counts = torch.empty(b, dtype=torch.int32, device=dev)
    workspace, n_bytes = None, 0
    if kernel == "grid":  # sized for the largest group the kernel may pick (auto: up to 8), needs no initialisation
        n_bytes = ext.rnnt_grid_workspace_bytes(layers, hidden, j, streams_per_block or 8)
        workspace = torch.empty(n_bytes // 4, dtype=torch.float32, device=dev)
    with torch.cuda.device(dev):
        ext.rnnt_greedy(f.data_ptr(), lengths.data_ptr(), slots.data_ptr(), frame_offset.data_ptr(), h.data_ptr(),
                        c.data_ptr(), pred.data_ptr(), label.data_ptr(), embed.data_ptr(),
                        [x.data_ptr() for x in lstm[0::4]], [x.data_ptr() for x in lstm[1::4]],
                        [x.data_ptr() for x in lstm[2::4]], [x.data_ptr() for x in lstm[3::4]],
                        jw["pred.weight"].data_ptr(), jw["pred.bias"].data_ptr(), jw["out.weight"].data_ptr(),
                        jw["out.bias"].data_ptr(), tokens.data_ptr(), frames.data_ptr(), counts.data_ptr(),
                        _dtype_code(ext, f.dtype), b, t, s, e, hidden, j, n_classes, blank_id, max_symbols,
                        streams_per_block, torch.cuda.current_stream(dev).cuda_stream, kernel=kernel,
                        workspace=0 if workspace is None else workspace.data_ptr(), workspace_bytes=n_bytes,
                        grid_blocks=grid_blocks, threads=threads)
    return tokens, frames, counts


def rnnt_greedy_ref(f: torch.Tensor, lengths: torch.Tensor, slots: torch.Tensor, frame_offset: torch.Tensor,
                    h: torch.Tensor, c: torch.Tensor, pred: torch.Tensor, label: torch.Tensor, dec: dict,
                    joint: dict, *, max_symbols: int, blank_id: int, streams_per_block: int = 0,
                    kernel: str = "blocked", grid_blocks: int = 0, threads: int = 0
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference for `rnnt_greedy`, any device and dtype, same arguments, outputs and in-place state update.

    The batched frame-synchronous loop of `greedy_decode` with its early exits replaced by masks, so it never
    synchronises with the host (T * max_symbols joint and LSTM evaluations over all B streams). It runs the same
    torch ops on the same batch as `greedy_decode`, so on one device the two agree bit for bit.
    `streams_per_block`, `kernel`, `grid_blocks` and `threads` are ignored. Slots outside the pool get
    counts[b] = -1, as in the kernel.
    """
    from .reference.decoder import joint_logits, predict

    b, t, _ = f.shape
    s = h.shape[1]
    dev = f.device
    n_out = t * max_symbols
    tokens = torch.zeros(b, n_out, dtype=torch.int32, device=dev)  # [B, T * max_symbols]
    frames = torch.zeros(b, n_out, dtype=torch.int32, device=dev)
    counts = torch.zeros(b, dtype=torch.int64, device=dev)  # [B]
    ok = (slots >= 0) & (slots < s)  # [B]
    idx = slots.clamp(0, s - 1)
    hh, cc, pp, lab = h[:, idx], c[:, idx], pred[idx], label[idx]  # [L, B, H], [L, B, H], [B, J], [B]
    rows = torch.arange(b, device=dev)
    for ti in range(t):
        active = ok & (lengths > ti)  # [B]
        for _ in range(max_symbols):
            k = joint_logits(f[:, ti], pp, joint).argmax(dim=-1)  # [B]
            emit = active & (k != blank_id)
            new_pred, h2, c2 = predict(k.masked_fill(~emit, blank_id), hh, cc, dec, joint)
            at = counts.clamp(max=max(n_out - 1, 0))
            tokens[rows, at] = torch.where(emit, k.to(torch.int32), tokens[rows, at])
            frames[rows, at] = torch.where(emit, (frame_offset + ti).to(torch.int32), frames[rows, at])
            counts += emit
            m = emit.view(1, b, 1)
            hh = torch.where(m, h2, hh)
            cc = torch.where(m, c2, cc)
            pp = torch.where(emit.view(b, 1), new_pred, pp)
            lab = torch.where(emit, k, lab)
            active = emit
    # Write back without a host sync: streams with a slot outside the pool write to a scratch row S, dropped after.
    target = torch.where(ok, slots, s)  # [B]
    for pool, vals, dim in ((h, hh, 1), (c, cc, 1), (pred, pp, 0), (label, lab, 0)):
        ext = torch.cat([pool, pool.narrow(dim, 0, 1)], dim=dim)
        ext.index_copy_(dim, target, vals)
        pool.copy_(ext.narrow(dim, 0, s))
    return tokens, frames, torch.where(ok, counts, -1).to(torch.int32)
