"""The batched greedy RNN-T decoder (csrc/rnnt_greedy.cu, nemotron_engine._ext.rnnt_greedy) against the reference
`greedy_decode`, token for token, with the decoder state in a pool at scattered slots.

Every launch mixes streams in different states: mid-utterance, fresh (after SOS), one whose joint always emits (it
hits the symbol cap on every frame), finished (length 0) and one with fewer valid frames than the step.

What is asserted (`check_step`):
- tokens and their global frames equal the reference's, stream by stream. On random weights an argmax can be a
  near-tie that a different summation order flips; a stream that disagrees is accepted only if, at its first
  disagreement, the reference's own logits put both choices within NEAR_TIE[dtype] * max|logit| of the top, and
  only for a few streams (fp32: at most 1 in 50; bf16: at most 1 in 5). Nothing else about it is compared.
- for the other streams the pool state at their slots: h, c, pred within RTOL (fp32 1e-5; bf16 2e-2, the bf16
  reference itself rounding every op), labels exactly; slots not in the step and streams of length 0 bit for bit
  unchanged.
- the capped stream emits exactly length * max_symbols labels.
Where the kernel and the reference compute the same thing in the same order the test is exact instead: splitting
a step into two launches, the streams-per-block variants, the torch twin `rnnt_greedy_ref` vs `greedy_decode`.

Without a GPU, the kernel's own source runs on the CPU under csrc/emu/cuda_emu.h (every CUDA thread a fiber,
several schedules that would expose a missing __syncthreads) against the CPU reference, with the same checks.
The grid-wide kernel (`kernel="grid"`, a cooperative launch) runs there with every block resident, under a fourth
schedule that lets one block run ahead to its next grid barrier; it must equal the per-stream kernel bit for bit.
"""
from __future__ import annotations

import ctypes
import hashlib
import math
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from nemotron_engine import _ext
from nemotron_engine.config import ModelConfig
from nemotron_engine.decode_cuda import greedy_decode_pool
from nemotron_engine.reference.decoder import DecoderState, greedy_decode, initial_state, joint_logits, predict
from tolerances import RTOL, rel_err

ROOT = Path(__file__).resolve().parents[1]

# bf16: STYLE.md's starting point for bf16; the reference rounds every op to bf16 and so does the kernel
STATE_RTOL = {torch.float32: RTOL[torch.float32], torch.bfloat16: 2e-2}
# A disagreement must sit at a decision whose two choices are this close (relative to max |logit|) in the
# reference: fp32 10x the state tolerance; bf16 4 steps of bfloat16 at the largest logits (<= 2^-7 each).
NEAR_TIE = {torch.float32: 1e-4, torch.bfloat16: 2.0**-5}
# and concern at most this share of the streams
MAX_DIVERGED = {torch.float32: 1 / 50, torch.bfloat16: 1 / 5}

# (D, E, H, J, V, layers, max_symbols): V + 1 classes, blank = V
SIZES = {
    "small": (24, 16, 16, 20, 12, 2, 3),
    "odd": (19, 14, 10, 18, 10, 1, 2),  # sizes not multiples of 4: the scalar path
    "deep": (40, 32, 24, 28, 20, 3, 4),
    "nemotron": (1024, 640, 640, 640, 1024, 2, 10),
    # Nemotron 3.5 ASR Streaming's 13,088 pieces: the class loop over V + 1 = 13,089 rows, at test width and at
    # the real width
    "wide_vocab": (24, 16, 16, 20, 13088, 2, 3),
    "nemotron35": (1024, 640, 640, 640, 13088, 2, 10),
}
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.bfloat16, id="bf16")]
DTYPE_IDS = {torch.float32: "fp32", torch.bfloat16: "bf16"}
KINDS = ("mid", "fresh", "capped", "finished", "partial")


@pytest.fixture(autouse=True)
def _full_precision_bf16_gemms():
    """cuBLAS may reduce bf16 GEMMs in bf16 by default; the reference here accumulates in fp32, as the kernel."""
    matmul = torch.backends.cuda.matmul
    saved = matmul.allow_bf16_reduced_precision_reduction
    matmul.allow_bf16_reduced_precision_reduction = False
    yield
    matmul.allow_bf16_reduced_precision_reduction = saved


# ---- model, pool and step set-up ----------------------------------------------------------------------------------
def make_model(size: str, dtype: torch.dtype, device, seed: int = 0, tie_bias: float | None = None):
    """A random decoder + joint (reference weight layout) with the blank bias set so that ~60 % of decisions are
    blank, and `capped_dir`, an encoder frame direction whose joint always emits the label `capped_label`.

    tie_bias: labels 1 and 2 get the same one-hot joint row (4.0 at unit 0) and biases 0 and tie_bias, joint.pred is
    zeroed (so the joint input depends on f alone), and enc = tie_base + s * tie_dir gives f = s * e_0: logits 1 and
    2 are then 4 * relu(s) and 4 * relu(s) + tie_bias, computed exactly by any summation order, and tie or not
    after rounding to bfloat16 depending on s."""
    d, e, h, j, v, layers, max_symbols = SIZES[size]
    g = torch.Generator().manual_seed(seed)
    cfg = ModelConfig(d_model=d, vocab_size=v, blank_id=v, pred_hidden=h, pred_rnn_layers=layers, joint_hidden=j,
                      max_symbols=max_symbols)
    k = 1.5 / math.sqrt(h)
    dec = {"embed": torch.randn(v + 1, e, generator=g)}
    dec["embed"][v] = 0.0  # blank_as_pad: the SOS row is zero
    for layer in range(layers):
        k_in = e if layer == 0 else h
        dec[f"lstm.{layer}.w_ih"] = (torch.rand(4 * h, k_in, generator=g) * 2 - 1) * k
        dec[f"lstm.{layer}.w_hh"] = (torch.rand(4 * h, h, generator=g) * 2 - 1) * k
        dec[f"lstm.{layer}.b_ih"] = (torch.rand(4 * h, generator=g) * 2 - 1) * k
        dec[f"lstm.{layer}.b_hh"] = (torch.rand(4 * h, generator=g) * 2 - 1) * k
    joint = {
        "enc.weight": torch.randn(j, d, generator=g) / math.sqrt(d),
        "enc.bias": torch.randn(j, generator=g) * 0.1,
        "pred.weight": torch.randn(j, h, generator=g) / math.sqrt(h),
        "pred.bias": torch.randn(j, generator=g) * 0.1,
        "out.weight": torch.randn(v + 1, j, generator=g) * (2 / math.sqrt(j)),
        "out.bias": torch.randn(v + 1, generator=g) * 0.1,
    }
    model = SimpleNamespace(cfg=cfg, dec=dec, joint=joint, dtype=torch.float32, device=torch.device("cpu"))
    # blank bias: P(blank logit > best other logit) ~ 0.6 over random frames from the SOS state
    st = initial_state(model, 1)
    f = F.linear(torch.randn(512, d, generator=g), joint["enc.weight"], joint["enc.bias"])  # [N, J]
    logits = joint_logits(f, st.pred.expand(512, -1), joint)  # [N, V + 1]
    margin = logits[:, :v].max(dim=1).values - logits[:, v]
    joint["out.bias"][v] += torch.quantile(margin, 0.6)
    if tie_bias is not None:
        joint["pred.weight"].zero_()
        joint["out.weight"][1:3] = 0.0
        joint["out.weight"][1:3, 0] = 4.0
        joint["out.bias"][1], joint["out.bias"][2] = 0.0, tie_bias
        e0 = torch.zeros(j, dtype=torch.float64)
        e0[0] = 1.0
        w_enc = joint["enc.weight"].double()
        model.tie_dir = torch.linalg.lstsq(w_enc, e0.unsqueeze(1)).solution.squeeze(1).float()  # [D]
        model.tie_base = torch.linalg.lstsq(w_enc, -joint["enc.bias"].double().unsqueeze(1)).solution.squeeze(1).float()
    # capped stream: f = s * relu(out.weight[c]) makes label c win by a wide margin (c: the best such margin)
    w = joint["out.weight"]
    dirs = torch.relu(w[:v])  # [V, J] candidate directions
    scores = dirs @ w.T  # [V, V + 1]: logits (without bias) of hid = dir
    own = scores[torch.arange(v), torch.arange(v)]
    others = scores.clone()
    others[torch.arange(v), torch.arange(v)] = -math.inf
    gap = own - others.max(dim=1).values
    label = int(gap.argmax())
    assert gap[label] > 0, "no label can be forced with this draw; change the seed"
    scale = 100 * (float(logits.abs().max()) + float(joint["out.bias"].abs().max())) / float(gap[label])
    f_star = scale * dirs[label]  # [J]
    # the encoder frame with joint.enc(x) = f_star (least squares; exact when D >= J)
    x = torch.linalg.lstsq(joint["enc.weight"].double(), (f_star - joint["enc.bias"]).double().unsqueeze(1))
    model.capped_dir = x.solution.squeeze(1).float()  # [D]
    model.capped_label = label
    for group in (dec, joint):
        for name in group:
            group[name] = group[name].to(device=device, dtype=dtype).contiguous()
    model.dtype = dtype
    model.device = torch.device(device)
    return model


def make_pool(model, n_slots: int, seed: int):
    """Pool of n_slots: every slot random (stale streams), h, c [L, S, H], pred [S, J], label [S]."""
    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    kw = dict(dtype=model.dtype, device=model.device)
    h = torch.randn(cfg.pred_rnn_layers, n_slots, cfg.pred_hidden, generator=g).to(**kw)
    return SimpleNamespace(
        h=h, c=torch.randn(h.shape, generator=g).to(**kw),
        pred=torch.randn(n_slots, cfg.joint_hidden, generator=g).to(**kw),
        label=torch.randint(0, cfg.blank_id + 1, (n_slots,), generator=g).to(model.device))


def clone_pool(pool):
    return SimpleNamespace(h=pool.h.clone(), c=pool.c.clone(), pred=pool.pred.clone(), label=pool.label.clone())


def make_step(model, b: int, t: int, seed: int, spare_slots: int = 7):
    """A step of b streams with t frames: (pool, enc [B, T, D], lengths, slots, frame_offset, kinds)."""
    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    dev = model.device
    pool = make_pool(model, b + spare_slots, seed)
    slots = torch.randperm(b + spare_slots, generator=g)[:b]  # [B] scattered, non-contiguous
    kinds = [KINDS[i % len(KINDS)] for i in range(b)]
    enc = torch.randn(b, t, cfg.d_model, generator=g)  # [B, T, D]
    lengths = torch.full((b,), t, dtype=torch.int64)
    sos = initial_state(model, 1)
    mid = [i for i, kd in enumerate(kinds) if kd == "mid"]
    for i, kd in enumerate(kinds):
        if kd == "capped":
            enc[i] = model.capped_dir
        elif kd == "finished":
            lengths[i] = 0
        elif kd == "partial":
            lengths[i] = int(torch.randint(1, max(t, 2), (), generator=g)) if t > 1 else 0
        if kd != "mid" and kd != "finished":
            s = int(slots[i])
            pool.h[:, s], pool.c[:, s] = sos.h[:, 0], sos.c[:, 0]
            pool.pred[s], pool.label[s] = sos.pred[0], sos.label[0]
    if mid:
        # mid-utterance: the state after decoding 4 earlier frames from SOS
        n = len(mid)
        st = initial_state(model, n)
        prev = torch.randn(n, 4, cfg.d_model, generator=g).to(device=dev, dtype=model.dtype)
        _, _, st = greedy_decode(model, prev, torch.full((n,), 4, device=dev), st, torch.zeros(n, device=dev))
        sel = slots[mid].to(dev)
        pool.h[:, sel], pool.c[:, sel], pool.pred[sel], pool.label[sel] = st.h, st.c, st.pred, st.label
    frame_offset = torch.randint(0, 1000, (b,), generator=g)
    return (pool, enc.to(device=dev, dtype=model.dtype), lengths.to(dev), slots.to(dev), frame_offset.to(dev),
            kinds)


def projection(model, enc):
    return F.linear(enc, model.joint["enc.weight"], model.joint["enc.bias"]).contiguous()  # [B, T, J]


# ---- the comparison -----------------------------------------------------------------------------------------------
def first_divergence(ref_t, ref_f, out_t, out_f, blank):
    """(prefix length, decision frame, reference choice, kernel choice) of the first differing decision."""
    i = 0
    while i < min(len(ref_t), len(out_t)) and (ref_t[i], ref_f[i]) == (out_t[i], out_f[i]):
        i += 1
    rf = ref_f[i] if i < len(ref_t) else math.inf
    of = out_f[i] if i < len(out_t) else math.inf
    frame = min(rf, of)
    return i, frame, ref_t[i] if rf == frame else blank, out_t[i] if of == frame else blank


def check_step(model, pool0, pool, enc, lengths, slots, frame_offset, out_tokens, out_frames, kinds=None):
    """Assert the kernel's step (lists per stream, and `pool` after it) against greedy_decode on `pool0`."""
    cfg = model.cfg
    dtype = model.dtype
    b = enc.shape[0]
    st0 = DecoderState(pool0.h[:, slots], pool0.c[:, slots], pool0.label[slots], pool0.pred[slots])
    ref_t, ref_f, ref_st = greedy_decode(model, enc, lengths, st0, frame_offset)
    f = projection(model, enc)
    diverged = []
    for i in range(b):
        if (ref_t[i], ref_f[i]) == (out_tokens[i], out_frames[i]):
            continue
        n, frame, a, k = first_divergence(ref_t[i], ref_f[i], out_tokens[i], out_frames[i], cfg.blank_id)
        # the reference's logits at that decision: replay its first n labels from the stream's state
        h, c, pred = st0.h[:, i: i + 1], st0.c[:, i: i + 1], st0.pred[i: i + 1]
        for lab in ref_t[i][:n]:
            pred, h, c = predict(torch.tensor([lab], device=model.device), h, c, model.dec, model.joint)
        logits = joint_logits(f[i, frame - int(frame_offset[i])].unsqueeze(0), pred, model.joint)[0].float()
        top, scale = float(logits.max()), float(logits.abs().max())
        tol = NEAR_TIE[dtype] * scale
        info = (f"stream {i} ({kinds[i] if kinds else '?'}): after {n} labels at frame {frame} the reference chose "
                f"{a} (logit {float(logits[a]):.6g}), the kernel {k} (logit {float(logits[k]):.6g}); top "
                f"{top:.6g}, near-tie tolerance {tol:.3g}")
        assert top - float(logits[a]) <= tol and top - float(logits[k]) <= tol, "not a near-tie: " + info
        diverged.append(info)
    assert len(diverged) <= max(1, int(b * MAX_DIVERGED[dtype])), "too many near-tie flips:\n" + "\n".join(diverged)
    same = torch.tensor([i for i in range(b) if (ref_t[i], ref_f[i]) == (out_tokens[i], out_frames[i])],
                        dtype=torch.int64, device=model.device)
    s_same = slots[same]
    for name, got, want in (("h", pool.h[:, s_same], ref_st.h[:, same]), ("c", pool.c[:, s_same], ref_st.c[:, same]),
                            ("pred", pool.pred[s_same], ref_st.pred[same])):
        err = rel_err(want.float().cpu(), got.float().cpu())
        assert err <= STATE_RTOL[dtype], f"{name}: relative error {err:.3g} > {STATE_RTOL[dtype]:g}"
    assert torch.equal(pool.label[s_same], ref_st.label[same])
    # slots outside the step and streams without frames: untouched, bit for bit
    keep = torch.ones(pool.h.shape[1], dtype=torch.bool, device=model.device)
    keep[slots[lengths > 0]] = False
    for name in ("h", "c"):
        assert torch.equal(getattr(pool, name)[:, keep], getattr(pool0, name)[:, keep]), name
    assert torch.equal(pool.pred[keep], pool0.pred[keep]) and torch.equal(pool.label[keep], pool0.label[keep])
    if kinds:
        for i, kd in enumerate(kinds):
            if kd == "capped":
                n = int(lengths[i]) * cfg.max_symbols
                assert out_tokens[i] == [model.capped_label] * n, f"capped stream {i}: {out_tokens[i][:12]}..."
                first = int(frame_offset[i])
                assert out_frames[i] == [first + j // cfg.max_symbols for j in range(n)]
            if kd == "finished":
                assert out_tokens[i] == [] and out_frames[i] == []
    return diverged, ref_t, ref_f


def as_lists(tokens, frames, counts):
    n = counts.tolist()
    return ([tokens[i, : n[i]].tolist() for i in range(len(n))], [frames[i, : n[i]].tolist() for i in range(len(n))])


def run_op(op, model, pool, enc, lengths, slots, frame_offset, **kw):
    return op(projection(model, enc), lengths, slots, frame_offset, pool.h, pool.c, pool.pred, pool.label, model.dec,
              model.joint, max_symbols=model.cfg.max_symbols, blank_id=model.cfg.blank_id, **kw)


# ---- the kernel on the CPU (csrc/emu) -----------------------------------------------------------------------------
_EMU_SOURCES = ["csrc/emu/cuda_emu.h", "csrc/emu/rnnt_greedy_emu.cpp", "csrc/include/nemotron/rnnt_greedy.cuh"]
_emu_lib = None


def emu_lib():
    """Build (once, cached by source hash) and load the CPU emulation of the kernel; skip without g++."""
    global _emu_lib
    if _emu_lib is None:
        cxx = shutil.which("g++") or shutil.which("c++")
        if cxx is None:
            pytest.fail("needs g++ to build the CPU emulation of the kernel (csrc/emu); install g++")
        key = hashlib.sha1(b"".join((ROOT / p).read_bytes() for p in _EMU_SOURCES)).hexdigest()[:16]
        lib = Path(tempfile.gettempdir()) / f"nemotron-rnnt-emu-{key}.so"
        if not lib.exists():
            tmp = lib.with_suffix(f".{Path(tempfile.mktemp()).name}.tmp")
            subprocess.run([cxx, "-std=c++17", "-O1", "-fno-strict-aliasing", "-ffp-contract=off",
                            "-Wno-unknown-pragmas", "-shared", "-fPIC", f"-I{ROOT / 'csrc/include'}",
                            f"-I{ROOT / 'csrc/emu'}", str(ROOT / "csrc/emu/rnnt_greedy_emu.cpp"), "-o", str(tmp)],
                           check=True)
            tmp.rename(lib)
        _emu_lib = ctypes.CDLL(str(lib))
        _emu_lib.nemotron_rnnt_greedy_emu.restype = ctypes.c_int
    return _emu_lib


def rnnt_greedy_emu(f, lengths, slots, frame_offset, h, c, pred, label, dec, joint, *, max_symbols, blank_id,
                    streams_per_block=1, threads=64, schedule=0, grid_blocks=0):
    """`_ext.rnnt_greedy` with the kernel run on the CPU (CPU tensors, contiguous); same outputs.

    grid_blocks >= 1 runs the grid-wide kernel (`kernel="grid"`) on that many blocks, all resident at once as under a
    cooperative launch, streams_per_block streams per group (1, 2, 4 or 8)."""
    lib = emu_lib()
    b, t, j = f.shape
    layers, s, hidden = h.shape
    v1, e = dec["embed"].shape
    tokens = torch.full((b, t * max_symbols), -7, dtype=torch.int32)
    frames = torch.full((b, t * max_symbols), -7, dtype=torch.int32)
    counts = torch.full((b,), -7, dtype=torch.int32)
    lstm = [dec[f"lstm.{l}.{k}"] for k in ("w_ih", "w_hh", "b_ih", "b_hh") for l in range(layers)]
    weights = [dec["embed"], joint["pred.weight"], joint["pred.bias"], joint["out.weight"], joint["out.bias"], *lstm]
    mats = [joint["pred.weight"], joint["out.weight"], *lstm[: 2 * layers]]
    vec = e % 4 == 0 and hidden % 4 == 0 and j % 4 == 0 and all(m.data_ptr() % (4 * m.element_size()) == 0
                                                                  for m in mats)
    tensors = [f, lengths, slots, frame_offset, h, c, pred, label, *weights[:5], tokens, frames, counts, *lstm]
    assert all(x.is_contiguous() and x.device.type == "cpu" for x in tensors)
    sizes = (ctypes.c_int64 * 11)(b, t, layers, s, e, hidden, j, v1, blank_id, max_symbols, t * max_symbols)
    ptrs = (ctypes.c_uint64 * len(tensors))(*[x.data_ptr() for x in tensors])
    err = ctypes.create_string_buffer(512)
    rc = lib.nemotron_rnnt_greedy_emu(sizes, ptrs, 0 if f.dtype == torch.float32 else 1, streams_per_block, int(vec),
                                      threads, grid_blocks, schedule, err, 512)
    assert rc == 0, err.value.decode()
    return tokens, frames, counts


EMU_CASES = [
    # size, dtype, B, T, streams per block, threads
    ("small", torch.float32, 7, 5, 1, 64),
    ("small", torch.float32, 9, 4, 2, 96),
    ("small", torch.float32, 11, 4, 4, 64),
    ("odd", torch.float32, 6, 5, 1, 32),
    ("odd", torch.float32, 5, 3, 4, 64),
    ("deep", torch.float32, 6, 4, 4, 128),
    ("small", torch.bfloat16, 9, 5, 4, 64),
    ("deep", torch.bfloat16, 5, 4, 1, 96),
    ("wide_vocab", torch.float32, 5, 4, 2, 64),
]


@pytest.mark.parametrize("size,dtype,b,t,g,threads",
                         [pytest.param(*c, id="{}-{}-B{}-T{}-G{}-thr{}".format(c[0], DTYPE_IDS[c[1]], *c[2:]))
                          for c in EMU_CASES])
def test_kernel_emulated_on_cpu(size, dtype, b, t, g, threads):
    """The kernel's source on the CPU: against the reference, and the same result under three thread schedules."""
    torch.manual_seed(0)
    model = make_model(size, dtype, "cpu")
    pool0, enc, lengths, slots, offset, kinds = make_step(model, b, t, seed=1)
    results = []
    for schedule in (0, 1, 2):
        pool = clone_pool(pool0)
        out = run_op(rnnt_greedy_emu, model, pool, enc, lengths, slots, offset, streams_per_block=g, threads=threads,
                     schedule=schedule)
        results.append((out, pool))
    (tokens, frames, counts), pool = results[0]
    for (t2, f2, c2), p2 in results[1:]:
        assert torch.equal(counts, c2) and torch.equal(tokens, t2) and torch.equal(frames, f2)
        for name in ("h", "c", "pred", "label"):
            assert torch.equal(getattr(pool, name), getattr(p2, name)), f"{name} depends on the thread schedule"
    toks, stamps = as_lists(tokens, frames, counts)
    check_step(model, pool0, pool, enc, lengths, slots, offset, toks, stamps, kinds)


def test_kernel_emulated_split_step_is_exact():
    """Two launches over frames [0, 3) and [3, 7) give the one launch's tokens and state bit for bit."""
    model = make_model("small", torch.float32, "cpu")
    pool0, enc, lengths, slots, offset, _ = make_step(model, 6, 7, seed=2)
    whole = clone_pool(pool0)
    out = as_lists(*run_op(rnnt_greedy_emu, model, whole, enc, lengths, slots, offset, streams_per_block=2))
    split = clone_pool(pool0)
    first = as_lists(*run_op(rnnt_greedy_emu, model, split, enc[:, :3].contiguous(), lengths.clamp(max=3), slots,
                             offset, streams_per_block=4))
    second = as_lists(*run_op(rnnt_greedy_emu, model, split, enc[:, 3:].contiguous(), (lengths - 3).clamp(min=0),
                              slots, offset + 3, streams_per_block=1))
    assert [a + b for a, b in zip(first[0], second[0])] == out[0]
    assert [a + b for a, b in zip(first[1], second[1])] == out[1]
    for name in ("h", "c", "pred", "label"):
        assert torch.equal(getattr(split, name), getattr(whole, name)), name


def test_kernel_emulated_bad_slot():
    """A slot outside the pool: counts -1 and nothing written; the other streams decode normally."""
    model = make_model("small", torch.float32, "cpu")
    pool0, enc, lengths, slots, offset, kinds = make_step(model, 3, 4, seed=3)
    slots = slots.clone()
    slots[1] = pool0.h.shape[1] + 5
    pool = clone_pool(pool0)
    tokens, frames, counts = run_op(rnnt_greedy_emu, model, pool, enc, lengths, slots, offset, streams_per_block=2)
    assert int(counts[1]) == -1
    toks, stamps = as_lists(tokens, frames, counts)
    ok = [0, 2]
    check_step(model, pool0, pool, enc[ok], lengths[ok], slots[ok], offset[ok], [toks[i] for i in ok],
               [stamps[i] for i in ok], [kinds[i] for i in ok])


def check_ties(op, dtype, device, **kw):
    """Argmax ties go to the lower index: exact ties (fp32, equal rows and biases) and ties made by rounding the
    logits to bfloat16 (biases 3.0 apart: a tie at logits >= 1024, where a bfloat16 step is 8; label 2 wins below),
    decided exactly as the reference decides them."""
    t = 7
    model = make_model("small", dtype, device, tie_bias=0.0 if dtype == torch.float32 else 3.0)
    pool0, enc, lengths, slots, offset, kinds = make_step(model, 5, t, seed=11)
    i = kinds.index("fresh")
    scale = torch.tensor([100.0, 137.0, 201.5, 255.25, 310.0, 389.75, 397.0])  # [T] f_0 of each frame
    enc[i] = (model.tie_base + scale[:, None] * model.tie_dir).to(device=device, dtype=dtype)
    pool = clone_pool(pool0)
    toks, stamps = as_lists(*run_op(op, model, pool, enc, lengths, slots, offset, **kw))
    _, ref_t, ref_f = check_step(model, pool0, pool, enc, lengths, slots, offset, toks, stamps, kinds)
    n = t * model.cfg.max_symbols
    assert len(ref_t[i]) == n and set(ref_t[i]) <= {1, 2}, ref_t[i]
    assert (toks[i], stamps[i]) == (ref_t[i], ref_f[i]), "a tie was decided unlike the reference"
    if dtype == torch.float32:
        assert toks[i] == [1] * n
    else:
        assert 0 < toks[i].count(1) < n  # rounded ties and clear wins both occur


@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel_emulated_ties(dtype):
    check_ties(rnnt_greedy_emu, dtype, "cpu", streams_per_block=2)


BLOCKS_IN_TURN = 3  # emu::kBlocksInTurn
GRID_EMU_CASES = [
    # size, dtype, B, T, streams per group, threads, blocks
    ("small", torch.float32, 1, 6, 1, 64, 3),
    ("small", torch.float32, 5, 5, 2, 32, 4),  # 3 groups; one warp per block reduces every stream's argmax
    ("small", torch.float32, 9, 4, 8, 64, 2),  # 2 groups, the second partly empty
    ("odd", torch.float32, 6, 5, 1, 64, 2),  # the scalar path
    ("deep", torch.float32, 7, 4, 4, 96, 3),  # 3 LSTM layers
    ("small", torch.bfloat16, 9, 5, 4, 64, 3),
    ("deep", torch.bfloat16, 5, 4, 8, 32, 5),
]


@pytest.mark.parametrize("size,dtype,b,t,g,threads,blocks",
                         [pytest.param(*c, id="{}-{}-B{}-T{}-G{}-thr{}-P{}".format(c[0], DTYPE_IDS[c[1]], *c[2:]))
                          for c in GRID_EMU_CASES])
def test_grid_kernel_emulated_on_cpu(size, dtype, b, t, g, threads, blocks):
    """The grid-wide kernel's source on the CPU, every block resident as under a cooperative launch: against the
    reference; bit for bit the per-stream kernel's tokens and state; the same under four thread schedules (a
    missing barrier, block-level or grid-wide, shows up as a difference; BLOCKS_IN_TURN lets each block run up to
    its next grid barrier before the next block starts)."""
    torch.manual_seed(0)
    model = make_model(size, dtype, "cpu")
    pool0, enc, lengths, slots, offset, kinds = make_step(model, b, t, seed=1)
    blocked = clone_pool(pool0)
    want = run_op(rnnt_greedy_emu, model, blocked, enc, lengths, slots, offset, streams_per_block=1)
    for schedule in (0, 1, 2, BLOCKS_IN_TURN):
        pool = clone_pool(pool0)
        got = run_op(rnnt_greedy_emu, model, pool, enc, lengths, slots, offset, streams_per_block=g, threads=threads,
                     schedule=schedule, grid_blocks=blocks)
        assert torch.equal(got[2], want[2]), f"counts {got[2].tolist()} != {want[2].tolist()} (schedule {schedule})"
        assert as_lists(*got) == as_lists(*want), f"schedule {schedule}"
        for name in ("h", "c", "pred", "label"):
            assert torch.equal(getattr(pool, name), getattr(blocked, name)), f"{name} (schedule {schedule})"
    toks, stamps = as_lists(*got)
    check_step(model, pool0, pool, enc, lengths, slots, offset, toks, stamps, kinds)


def test_grid_kernel_emulated_nemotron_size():
    """Nemotron's decoder shape (E = H = J = 640, 2 layers, 1025 classes, max_symbols 10; the 4-element load path over
    many rows per warp): the grid kernel on 3 blocks, blocks in turn, equals the per-stream kernel bit for bit and
    matches the reference (the capped stream emits 10 labels on each of its 3 frames)."""
    model = make_model("nemotron", torch.float32, "cpu")
    pool0, enc, lengths, slots, offset, kinds = make_step(model, 3, 3, seed=1)
    blocked = clone_pool(pool0)
    want = as_lists(*run_op(rnnt_greedy_emu, model, blocked, enc, lengths, slots, offset, streams_per_block=1))
    pool = clone_pool(pool0)
    got = as_lists(*run_op(rnnt_greedy_emu, model, pool, enc, lengths, slots, offset, streams_per_block=4,
                           grid_blocks=3, schedule=BLOCKS_IN_TURN))
    assert got == want
    for name in ("h", "c", "pred", "label"):
        assert torch.equal(getattr(pool, name), getattr(blocked, name)), name
    check_step(model, pool0, pool, enc, lengths, slots, offset, *got, kinds)


def test_grid_kernel_emulated_split_step_bad_slot_and_ties():
    """The grid-wide kernel: two launches equal one bit for bit; a slot outside the pool gets counts -1 and writes
    nothing; ties go to the lower index as in the reference."""
    model = make_model("small", torch.float32, "cpu")
    pool0, enc, lengths, slots, offset, _ = make_step(model, 6, 7, seed=2)
    grid = dict(grid_blocks=3, streams_per_block=4)
    whole = clone_pool(pool0)
    out = as_lists(*run_op(rnnt_greedy_emu, model, whole, enc, lengths, slots, offset, **grid))
    split = clone_pool(pool0)
    first = as_lists(*run_op(rnnt_greedy_emu, model, split, enc[:, :3].contiguous(), lengths.clamp(max=3), slots,
                             offset, **grid))
    second = as_lists(*run_op(rnnt_greedy_emu, model, split, enc[:, 3:].contiguous(), (lengths - 3).clamp(min=0),
                              slots, offset + 3, grid_blocks=2, streams_per_block=2))
    assert [a + b for a, b in zip(first[0], second[0])] == out[0]
    assert [a + b for a, b in zip(first[1], second[1])] == out[1]
    for name in ("h", "c", "pred", "label"):
        assert torch.equal(getattr(split, name), getattr(whole, name)), name

    pool0, enc, lengths, slots, offset, kinds = make_step(model, 3, 4, seed=3)
    slots = slots.clone()
    slots[1] = pool0.h.shape[1] + 5
    pool = clone_pool(pool0)
    tokens, frames, counts = run_op(rnnt_greedy_emu, model, pool, enc, lengths, slots, offset, **grid)
    assert int(counts[1]) == -1
    toks, stamps = as_lists(tokens, frames, counts)
    ok = [0, 2]
    check_step(model, pool0, pool, enc[ok], lengths[ok], slots[ok], offset[ok], [toks[i] for i in ok],
               [stamps[i] for i in ok], [kinds[i] for i in ok])

    for dtype in (torch.float32, torch.bfloat16):
        check_ties(rnnt_greedy_emu, dtype, "cpu", **grid)


# ---- the torch twin and the pool-level API (CPU) ------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b", [1, 3, 17])
def test_rnnt_greedy_ref_matches_greedy_decode_exactly(dtype, b):
    model = make_model("small", dtype, "cpu")
    pool0, enc, lengths, slots, offset, kinds = make_step(model, b, 6, seed=4)
    pool = clone_pool(pool0)
    toks, stamps = as_lists(*run_op(_ext.rnnt_greedy_ref, model, pool, enc, lengths, slots, offset))
    st0 = DecoderState(pool0.h[:, slots], pool0.c[:, slots], pool0.label[slots], pool0.pred[slots])
    ref_t, ref_f, ref_st = greedy_decode(model, enc, lengths, st0, offset)
    assert toks == ref_t and stamps == ref_f
    live = lengths > 0
    assert torch.equal(pool.h[:, slots[live]], ref_st.h[:, live]) and torch.equal(pool.c[:, slots[live]],
                                                                                   ref_st.c[:, live])
    assert torch.equal(pool.pred[slots[live]], ref_st.pred[live])
    assert torch.equal(pool.label[slots[live]], ref_st.label[live])
    check_step(model, pool0, pool, enc, lengths, slots, offset, toks, stamps, kinds)


def test_greedy_decode_pool_torch_cpu():
    model = make_model("deep", torch.float32, "cpu")
    pool0, enc, lengths, slots, offset, kinds = make_step(model, 5, 4, seed=5)
    pool = clone_pool(pool0)
    # lists and CPU int32 arguments are accepted
    toks, stamps = greedy_decode_pool(model, enc, lengths.tolist(), pool, slots.to(torch.int32), offset, impl="torch")
    check_step(model, pool0, pool, enc, lengths, slots, offset, toks, stamps, kinds)
    with pytest.raises(ValueError, match=r"slots \[\d+\] \(streams \[2\]\) are outside the cache's 12 slots"):
        bad = slots.clone()
        bad[2] = 40
        greedy_decode_pool(model, enc, lengths, clone_pool(pool0), bad, offset, impl="torch")
    with pytest.raises(ValueError, match="impl must be 'cuda' or 'torch', got 'triton'"):
        greedy_decode_pool(model, enc, lengths, pool, slots, offset, impl="triton")
    with pytest.raises(ValueError, match=r"lengths must be \[B\] = \[5\] integers, got shape \[4\]"):
        greedy_decode_pool(model, enc, lengths[:4], pool, slots, offset, impl="torch")


# ---- argument checks and no-GPU behaviour (CPU) -------------------------------------------------------------------
def _args(model, b=3, t=4):
    pool0, enc, lengths, slots, offset, _ = make_step(model, b, t, seed=6)
    return dict(f=projection(model, enc), lengths=lengths, slots=slots, frame_offset=offset, h=pool0.h, c=pool0.c,
                pred=pool0.pred, label=pool0.label, dec=model.dec, joint=model.joint,
                max_symbols=model.cfg.max_symbols, blank_id=model.cfg.blank_id)


def test_wrapper_rejects_bad_arguments():
    model = make_model("small", torch.float32, "cpu")
    a = _args(model)

    def raises(match, **change):
        with pytest.raises((ValueError, TypeError), match=match):
            _ext.rnnt_greedy(**{**a, **change})

    raises("f must be float32 or bfloat16, got float16", f=a["f"].half())
    raises(r"f must be a contiguous \[B, T, J\] tensor, got shape \[3, 20\]", f=a["f"][:, 0])
    raises(r"f must be a contiguous \[B, T, J\] tensor, got shape \[3, 2, 20\] with strides \[80, 40, 1\]",
           f=a["f"][:, ::2])
    raises("h must be float32, got bfloat16", h=a["h"].bfloat16())
    raises(r"c must have shape \[L, S, H\] like h = \[2, 10, 16\], got \[2, 10, 15\]", c=a["c"][..., :15].contiguous())
    raises(r"pred must have shape \[S, J\] \(S from h, J from f\) = \[10, 20\], got \[9, 20\]", pred=a["pred"][:9])
    raises("slots must be int64, got int32", slots=a["slots"].int())
    raises(r"lengths must have shape \[B\] = \[3\], got \[2\]", lengths=a["lengths"][:2])
    raises(r"label must have shape \[S\] = \[10\], got \[3\]", label=a["label"][:3])
    raises("max_symbols must be an int >= 1, got 0", max_symbols=0)
    raises("streams_per_block must be 0 \\(auto\\), 1, 2 or 4, got 3", streams_per_block=3)
    raises("kernel must be 'blocked' or 'grid', got 'warp'", kernel="warp")
    raises("streams_per_block must be 0 \\(auto\\), 1, 2 or 4, got 8", streams_per_block=8)
    raises(r"with kernel='grid', streams_per_block \(streams per group\) must be 0 \(auto\), 1, 2, 4 or 8, got 3",
           kernel="grid", streams_per_block=3)
    raises(r"grid_blocks must be an int in \[0, 1024\] \(0: one block per SM\), got -1", kernel="grid", grid_blocks=-1)
    raises(r"threads must be 0 \(auto\) or a multiple of 32 in \[32, 256\], got 48", kernel="grid", threads=48)
    raises(r"blank_id must be an int in \[0, 13\) \(dec\['embed'\] has 13 rows\), got 13", blank_id=13)
    raises(r"dec lacks \['lstm.1.w_ih'", dec={k: v for k, v in model.dec.items() if k != "lstm.1.w_ih"})
    raises(r"joint lacks \['out.bias'\]", joint={k: v for k, v in model.joint.items() if k != "out.bias"})
    raises(r"dec\['lstm.0.w_hh'\] must have shape \[4H, H\] = \[64, 16\], got \[64, 15\]",
           dec={**model.dec, "lstm.0.w_hh": model.dec["lstm.0.w_hh"][:, :15].contiguous()})
    raises(r"joint\['out.weight'\] must be contiguous",
           joint={**model.joint, "out.weight": model.joint["out.weight"].T.contiguous().T})
    raises(r"joint\['pred.bias'\] must be float32, got float64",
           joint={**model.joint, "pred.bias": model.joint["pred.bias"].double()})
    # everything well-formed but on the CPU: the device check names the first tensor
    raises("f must be a CUDA tensor, got device cpu; use rnnt_greedy_ref on the CPU")
    with pytest.raises(ValueError, match="f must be a CUDA tensor, got device cpu"):
        greedy_decode_pool(model, torch.zeros(3, 4, model.cfg.d_model), a["lengths"], SimpleNamespace(
            h=a["h"], c=a["c"], pred=a["pred"], label=a["label"]), a["slots"], a["frame_offset"])


def test_kernel_without_gpu_raises_runtime_error():
    c = _ext.load_extension()
    if c is None:
        pytest.fail(f"the extension is not built here ({_ext.extension_error()}); CI builds it with nvcc")
    assert hasattr(c, "rnnt_greedy"), "nemotron_engine._C predates rnnt_greedy: rebuild (pip install -e .)"
    if c.cuda_available():
        pytest.skip("a CUDA device is present: the gpu tests cover the kernel")
    with pytest.raises(RuntimeError, match=r"no CUDA device available \(cudaGetDeviceCount"):
        c.rnnt_greedy(0, 0, 0, 0, 0, 0, 0, 0, 0, [0], [0], [0], [0], 0, 0, 0, 0, 0, 0, 0, c.DTYPE_FLOAT32, 1, 1, 1,
                      1, 1, 1, 2, 1, 1, 0, 0)
    with pytest.raises(RuntimeError, match=r"no CUDA device available \(cudaGetDeviceCount"):
        c.rnnt_greedy(0, 0, 0, 0, 0, 0, 0, 0, 0, [0], [0], [0], [0], 0, 0, 0, 0, 0, 0, 0, c.DTYPE_FLOAT32, 1, 1, 1,
                      1, 1, 1, 2, 1, 1, 0, 0, kernel="grid")


def test_grid_workspace_bytes():
    """The grid kernel's workspace size (arithmetic in the extension, no device): h ping-pong [2, L, G, HP], c
    [L, G, HP], pred [G, JP], and each block's argmax for two iterations [2, 1024, G] float + int."""
    c = _ext.load_extension()
    if c is None:
        pytest.fail(f"the extension is not built here ({_ext.extension_error()}); CI builds it with nvcc")
    hp, jp = 640, 640
    for g in (1, 2, 4, 8):
        assert c.rnnt_grid_workspace_bytes(2, 640, 640, g) == 4 * (3 * 2 * g * hp + g * jp + 4 * 1024 * g)
    assert c.rnnt_grid_workspace_bytes(1, 10, 18, 1) == 4 * (3 * 12 + 20 + 4 * 1024)
    with pytest.raises(ValueError, match="streams_per_group must be 1, 2, 4 or 8, got 3"):
        c.rnnt_grid_workspace_bytes(2, 640, 640, 3)


# ---- the kernel on the GPU ----------------------------------------------------------------------------------------
GPU_CASES = [(size, b) for size in ("small", "odd", "deep") for b in (1, 3, 17, 300)] + [
    ("nemotron", 1), ("nemotron", 3), ("nemotron", 17), ("nemotron", 300), ("nemotron35", 17), ("nemotron35", 300)]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size,b", [pytest.param(s, b, id=f"{s}-B{b}") for s, b in GPU_CASES])
def test_rnnt_greedy_gpu(size, b, dtype):
    torch.manual_seed(0)
    model = make_model(size, dtype, "cuda")
    pool0, enc, lengths, slots, offset, kinds = make_step(model, b, 7, seed=b)
    pool = clone_pool(pool0)
    tokens, frames, counts = run_op(_ext.rnnt_greedy, model, pool, enc, lengths, slots, offset)
    torch.cuda.synchronize()
    toks, stamps = as_lists(tokens, frames, counts)
    check_step(model, pool0, pool, enc, lengths, slots, offset, toks, stamps, kinds)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", ["small", "odd", "nemotron"])
def test_rnnt_greedy_gpu_streams_per_block_agree(size, dtype):
    """G = 1, 2, 4 streams per block run the same arithmetic per stream: identical outputs and state."""
    model = make_model(size, dtype, "cuda")
    pool0, enc, lengths, slots, offset, kinds = make_step(model, 17, 7, seed=7)
    outs = []
    for g in (1, 2, 4):
        pool = clone_pool(pool0)
        out = run_op(_ext.rnnt_greedy, model, pool, enc, lengths, slots, offset, streams_per_block=g)
        outs.append((as_lists(*out), pool))
    (toks, stamps), pool = outs[0]
    for lists, p2 in outs[1:]:
        assert lists == (toks, stamps)
        for name in ("h", "c", "pred", "label"):
            assert torch.equal(getattr(p2, name), getattr(pool, name)), name
    check_step(model, pool0, pool, enc, lengths, slots, offset, toks, stamps, kinds)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size,b", [pytest.param(s, b, id=f"{s}-B{b}") for s, b in (
    ("small", 1), ("small", 17), ("odd", 3), ("deep", 5), ("nemotron", 1), ("nemotron", 4), ("nemotron", 8),
    ("nemotron", 17))])
def test_rnnt_greedy_gpu_grid_kernel(size, b, dtype):
    """kernel="grid" (cooperative launch, every block on every stream) == the per-stream kernel bit for bit, for
    every group size, grid size and block size tried, and against the reference."""
    model = make_model(size, dtype, "cuda")
    pool0, enc, lengths, slots, offset, kinds = make_step(model, b, 7, seed=20 + b)
    blocked = clone_pool(pool0)
    want = as_lists(*run_op(_ext.rnnt_greedy, model, blocked, enc, lengths, slots, offset, streams_per_block=1))
    vec = size != "odd"
    variants = [dict(), dict(grid_blocks=1, threads=64), dict(grid_blocks=7, threads=224)]
    variants += [dict(streams_per_block=g, grid_blocks=0, threads=256) for g in ((1, 2, 4, 8) if vec else (1,))]
    for kw in variants:
        pool = clone_pool(pool0)
        got = as_lists(*run_op(_ext.rnnt_greedy, model, pool, enc, lengths, slots, offset, kernel="grid", **kw))
        assert got == want, kw
        for name in ("h", "c", "pred", "label"):
            assert torch.equal(getattr(pool, name), getattr(blocked, name)), (name, kw)
    check_step(model, pool0, blocked, enc, lengths, slots, offset, *want, kinds)


@pytest.mark.gpu
def test_rnnt_greedy_gpu_grid_kernel_edges():
    """kernel="grid": ties, a bad slot, B = 0, T = 0, and a grid larger than can be resident (ValueError)."""
    for dtype in (torch.float32, torch.bfloat16):
        check_ties(_ext.rnnt_greedy, dtype, "cuda", kernel="grid")
    model = make_model("small", torch.float32, "cuda")
    pool0, enc, lengths, slots, offset, kinds = make_step(model, 3, 4, seed=9)
    slots = slots.clone()
    slots[1] = -1
    pool = clone_pool(pool0)
    tokens, frames, counts = run_op(_ext.rnnt_greedy, model, pool, enc, lengths, slots, offset, kernel="grid")
    assert int(counts[1]) == -1
    toks, stamps = as_lists(tokens, frames, counts)
    ok = [0, 2]
    check_step(model, pool0, pool, enc[ok], lengths[ok], slots[ok], offset[ok], [toks[i] for i in ok],
               [stamps[i] for i in ok], [kinds[i] for i in ok])
    tokens, frames, counts = run_op(_ext.rnnt_greedy, model, pool, enc[:0], lengths[:0], slots[:0], offset[:0],
                                    kernel="grid")
    assert counts.shape == (0,)
    pool = clone_pool(pool0)
    tokens, frames, counts = run_op(_ext.rnnt_greedy, model, pool, enc[:, :0].contiguous(), lengths, slots, offset,
                                    kernel="grid")
    assert counts.tolist() == [0, -1, 0] and tokens.shape == (3, 0)
    for name in ("h", "c", "pred", "label"):
        assert torch.equal(getattr(pool, name), getattr(pool0, name)), name
    props = torch.cuda.get_device_properties(0)
    resident_max = props.max_threads_per_multi_processor // 256 * props.multi_processor_count
    assert resident_max < 1024, f"this device could hold {resident_max} blocks of 256 threads: pick a larger ask"
    with pytest.raises(ValueError, match=r"grid_blocks=1024 is outside \[1, \d+\]"):
        run_op(_ext.rnnt_greedy, model, clone_pool(pool0), enc, lengths, slots, offset, kernel="grid",
               grid_blocks=1024, threads=256)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_rnnt_greedy_gpu_ties(dtype):
    check_ties(_ext.rnnt_greedy, dtype, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_rnnt_greedy_gpu_split_step_is_exact(dtype):
    """Streaming equivalence: frames [0, 3) then [3, 7) in two launches == one launch, bit for bit."""
    model = make_model("nemotron", dtype, "cuda")
    pool0, enc, lengths, slots, offset, _ = make_step(model, 17, 7, seed=8)
    whole = clone_pool(pool0)
    out = as_lists(*run_op(_ext.rnnt_greedy, model, whole, enc, lengths, slots, offset))
    split = clone_pool(pool0)
    first = as_lists(*run_op(_ext.rnnt_greedy, model, split, enc[:, :3].contiguous(), lengths.clamp(max=3), slots,
                             offset))
    second = as_lists(*run_op(_ext.rnnt_greedy, model, split, enc[:, 3:].contiguous(), (lengths - 3).clamp(min=0),
                              slots, offset + 3))
    assert [a + b for a, b in zip(first[0], second[0])] == out[0]
    assert [a + b for a, b in zip(first[1], second[1])] == out[1]
    for name in ("h", "c", "pred", "label"):
        assert torch.equal(getattr(split, name), getattr(whole, name)), name


@pytest.mark.gpu
def test_rnnt_greedy_gpu_bad_slot_and_empty():
    model = make_model("small", torch.float32, "cuda")
    pool0, enc, lengths, slots, offset, kinds = make_step(model, 3, 4, seed=9)
    slots = slots.clone()
    slots[1] = -1
    pool = clone_pool(pool0)
    tokens, frames, counts = run_op(_ext.rnnt_greedy, model, pool, enc, lengths, slots, offset)
    assert int(counts[1]) == -1
    toks, stamps = as_lists(tokens, frames, counts)
    ok = [0, 2]
    check_step(model, pool0, pool, enc[ok], lengths[ok], slots[ok], offset[ok], [toks[i] for i in ok],
               [stamps[i] for i in ok], [kinds[i] for i in ok])
    with pytest.raises(ValueError, match=r"slots \[-1\] \(streams \[1\]\) are outside"):
        greedy_decode_pool(model, enc, lengths, clone_pool(pool0), slots, offset)
    # B = 0 launches nothing; T = 0 decodes nothing and still writes the counts
    tokens, frames, counts = run_op(_ext.rnnt_greedy, model, pool, enc[:0], lengths[:0], slots[:0], offset[:0])
    assert counts.shape == (0,)
    pool = clone_pool(pool0)
    tokens, frames, counts = run_op(_ext.rnnt_greedy, model, pool, enc[:, :0].contiguous(), lengths, slots, offset)
    assert counts.tolist() == [0, -1, 0] and tokens.shape == (3, 0)
    for name in ("h", "c", "pred", "label"):
        assert torch.equal(getattr(pool, name), getattr(pool0, name)), name


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_greedy_decode_pool_gpu_cuda_vs_torch(dtype):
    model = make_model("nemotron", dtype, "cuda")
    pool0, enc, lengths, slots, offset, kinds = make_step(model, 17, 7, seed=10)
    pool = clone_pool(pool0)
    toks, stamps = greedy_decode_pool(model, enc, lengths, pool, slots, offset)
    check_step(model, pool0, pool, enc, lengths, slots, offset, toks, stamps, kinds)
    twin = clone_pool(pool0)
    toks, stamps = greedy_decode_pool(model, enc, lengths, twin, slots, offset, impl="torch")
    check_step(model, pool0, twin, enc, lengths, slots, offset, toks, stamps, kinds)


@pytest.mark.gpu
def test_wrapper_errors_gpu():
    model = make_model("small", torch.float32, "cuda")
    a = _args(model)
    with pytest.raises(ValueError, match="rnnt_greedy: h must be a CUDA tensor, got device cpu"):
        _ext.rnnt_greedy(**{**a, "h": a["h"].cpu()})
    with pytest.raises(ValueError, match=r"dec\['embed'\] must be a CUDA tensor, got device cpu"):
        _ext.rnnt_greedy(**{**a, "dec": {**model.dec, "embed": model.dec["embed"].cpu()}})
    c = _ext.load_extension()
    with pytest.raises(ValueError, match="rnnt_greedy: unsupported dtype code 7"):
        c.rnnt_greedy(0, 0, 0, 0, 0, 0, 0, 0, 0, [0], [0], [0], [0], 0, 0, 0, 0, 0, 0, 0, 7, 1, 1, 1, 1, 1, 1, 2, 1,
                      1, 0, 0)
    with pytest.raises(ValueError, match="blank id 2 is outside"):
        c.rnnt_greedy(0, 0, 0, 0, 0, 0, 0, 0, 0, [0], [0], [0], [0], 0, 0, 0, 0, 0, 0, 0, c.DTYPE_FLOAT32, 1, 1, 1,
                      1, 1, 1, 2, 2, 1, 0, 0)
