"""The CUDA extension nemotron_engine._C: build/import contract (runs everywhere), the pure-torch references
(CPU), and the kernels against the references (gpu).

Kernels and references: nemotron_engine/_ext.py (fill_pages / fill_pages_ref, write_rows / write_rows_ref).
"""

import importlib
import os
import shutil

import pytest
import torch

from nemotron_engine import _ext

DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.bfloat16, id="bf16")]


def _find_nvcc():
    """The same search as setup.py: PATH, $CUDA_HOME/bin, /usr/local/cuda/bin."""
    candidates = [shutil.which("nvcc"), os.path.join(os.environ.get("CUDA_HOME", "/nonexistent"), "bin", "nvcc"),
                  "/usr/local/cuda/bin/nvcc"]
    return next((p for p in candidates if p and os.path.isfile(p) and os.access(p, os.X_OK)), None)


def _build_skipped_on_purpose():
    info = _ext.build_info()
    return info is not None and not info.get("built", False) and "NEMOTRON_SKIP_CUDA_BUILD" in info.get("reason", "")


def _as_bits(t):
    """Compare bit patterns, so NaN == NaN and -0.0 != 0.0."""
    return t.view(torch.int16) if t.element_size() == 2 else t.view(torch.int32)


def test_extension_built_when_nvcc_present():
    if _find_nvcc() is not None and not _build_skipped_on_purpose():
        c = importlib.import_module("nemotron_engine._C")  # nvcc is here: the install must have built it
        assert isinstance(c.cuda_available(), bool)
        assert isinstance(c.device_count(), int)
        assert c.cuda_available() == (c.device_count() > 0)
        assert _ext.load_extension() is c and _ext.extension_error() is None
    else:
        ext = _ext.load_extension()
        if ext is None:
            reason = _ext.extension_error()
            assert reason is not None and reason.startswith("not built: "), reason


def test_kernel_without_gpu_raises_runtime_error():
    c = _ext.load_extension()
    if c is None:
        # only acceptable where it could not or was told not to be built
        assert _find_nvcc() is None or _build_skipped_on_purpose(), _ext.extension_error()
        return
    if c.cuda_available():
        # with a device the kernels are held to their references by the gpu-marked tests
        assert c.device_count() > 0
        return
    with pytest.raises(RuntimeError, match=r"no CUDA device available \(cudaGetDeviceCount"):
        c.fill_pages(0, c.DTYPE_FLOAT32, 1, 1, 0, 1, 0.0, 0, 0)
    with pytest.raises(RuntimeError, match="CUDA"):
        c.write_rows(0, c.DTYPE_BFLOAT16, 1, 1, 1, 0, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0)


@pytest.mark.parametrize("cuda_first", [False, True], ids=["plain", "after-torch-cuda"])
def test_error_path_raises_value_error_with_numbers(cuda_first):
    """A failed argument check in C++ reaches Python as a ValueError whose message carries the numbers. Runs on every
    machine (no CUDA needed); with a GPU, also after torch has initialised CUDA, the setting in which messages built
    with iostreams crashed the process (csrc/check.h)."""
    c = _ext.load_extension()
    if c is None:
        assert _find_nvcc() is None or _build_skipped_on_purpose(), _ext.extension_error()
        return
    if cuda_first and torch.cuda.is_available():
        torch.zeros(1, device="cuda").add_(1)
        torch.cuda.synchronize()
    for code in (7, -5, 2**40):
        with pytest.raises(ValueError, match=rf"^nemotron_engine\._C: error-path self-test: code {code} "
                                             rf"\(dtype codes: 0=float32, 1=bfloat16\)$"):
            c._error_path_self_test(code)


def test_wrappers_reject_cpu_tensors():
    pool = torch.zeros(4, 2, 8)  # [P, page_size, E]
    with pytest.raises(ValueError, match="pool must be a CUDA tensor, got device cpu"):
        _ext.fill_pages(pool, torch.zeros(1, dtype=torch.int32), 0.0)
    with pytest.raises(ValueError, match="pool must be a CUDA tensor"):
        _ext.write_rows(pool, torch.zeros(1, 8), torch.zeros(1, dtype=torch.int32), torch.zeros(1, dtype=torch.int64),
                        torch.zeros(1, 2, dtype=torch.int32))


def test_fill_pages_ref_cpu():
    torch.manual_seed(0)
    pool = torch.randn(9, 3, 5)  # [P, page_size, E]
    page_ids = torch.tensor([7, -1, 2, 9, 4], dtype=torch.int32)
    skipped = torch.zeros(1, dtype=torch.int32)
    expected = pool.clone()
    for p in (7, 2, 4):
        expected[p] = 1.5
    _ext.fill_pages_ref(pool, page_ids, 1.5, skipped=skipped)
    assert torch.equal(pool, expected)
    assert skipped.item() == 2


def test_write_rows_ref_cpu():
    torch.manual_seed(0)
    num_pages, page_size, row_elems, pages_per_stream = 12, 4, 6, 2
    pool = torch.full((num_pages, page_size, row_elems), float("nan"))  # [P, page_size, E]
    page_table = torch.randperm(num_pages, dtype=torch.int32)[:6].view(3, pages_per_stream)  # [S, pages_per_stream]
    page_table[2, 1] = -1
    stream_idx = torch.tensor([0, 0, 1, 2, 2, 5, 1], dtype=torch.int32)  # [N]
    frame_pos = torch.tensor([0, 9, 3, 2, 6, 0, -1], dtype=torch.int64)  # [N]
    src = torch.randn(7, row_elems)  # [N, E]
    skipped = torch.zeros(1, dtype=torch.int32)
    expected = pool.clone()
    n_skipped = 0
    for r in range(7):
        s, f = int(stream_idx[r]), int(frame_pos[r])
        page = int(page_table[s, (f // page_size) % pages_per_stream]) if 0 <= s < 3 and f >= 0 else -1
        if page < 0:
            n_skipped += 1
            continue
        expected[page, f % page_size] = src[r]
    _ext.write_rows_ref(pool, src, stream_idx, frame_pos, page_table, skipped=skipped)
    assert torch.equal(_as_bits(pool), _as_bits(expected))
    assert skipped.item() == n_skipped == 3


FILL_CASES = [(37, (16, 1024)), (9, (5, 7)), (64, (1, 96)), (3, (2,))]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_pages,page_shape", [pytest.param(n, s, id="P{}-page{}".format(n, "x".join(map(str, s))))
                                                  for n, s in FILL_CASES])
@pytest.mark.parametrize("offset", [pytest.param(0, id="aligned"), pytest.param(1, id="misaligned")])
@pytest.mark.parametrize("value", [0.0, 1.0 / 3.0, float("nan")], ids=["zero", "third", "nan"])
def test_fill_pages_gpu(dtype, num_pages, page_shape, offset, value):
    torch.manual_seed(0)
    page_elems = torch.Size(page_shape).numel()
    # A flat buffer offset by `offset` elements: offset 1 leaves the pool only element-aligned (scalar path).
    flat = torch.randn(offset + num_pages * page_elems, device="cuda").to(dtype)
    pool = flat[offset:].view(num_pages, *page_shape)  # [P, *page_shape]
    pool[torch.randperm(num_pages, device="cuda")[: num_pages // 3]] = float("nan")
    n_ids = max(1, num_pages // 2)
    page_ids = torch.randperm(num_pages, device="cuda")[:n_ids].to(torch.int32)  # [n]
    page_ids = torch.cat([page_ids, torch.tensor([-1, num_pages, 2**31 - 1], dtype=torch.int32, device="cuda")])
    ref = pool.clone()
    skipped = torch.zeros(1, dtype=torch.int32, device="cuda")
    skipped_ref = torch.zeros(1, dtype=torch.int32, device="cuda")
    _ext.fill_pages(pool, page_ids, value, skipped=skipped)
    _ext.fill_pages_ref(ref, page_ids, value, skipped=skipped_ref)
    torch.cuda.synchronize()
    # Exact, with NaN == NaN whatever its payload (NaN conversion to bfloat16 may differ between torch builds).
    torch.testing.assert_close(pool, ref, atol=0, rtol=0, equal_nan=True)
    assert skipped.item() == skipped_ref.item() == 3


WRITE_CASES = [(1, 16, 1024, 4), (3, 5, 7, 3), (17, 1, 96, 2), (4, 16, 8, 1)]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_streams,page_size,row_elems,pages_per_stream",
                         [pytest.param(*c, id="S{}-page{}-E{}-pps{}".format(*c)) for c in WRITE_CASES])
@pytest.mark.parametrize("src_layout", ["contiguous", "strided", "misaligned"])
def test_write_rows_gpu(dtype, n_streams, page_size, row_elems, pages_per_stream, src_layout):
    torch.manual_seed(0)
    # 3x the pages needed, page table from a permutation: pages are scattered and unused ones stay NaN.
    num_pages = 3 * n_streams * pages_per_stream
    pool = torch.full((num_pages, page_size, row_elems), float("nan"), dtype=dtype, device="cuda")  # [P, ps, E]
    perm = torch.randperm(num_pages, device="cuda")[: n_streams * pages_per_stream]
    page_table = perm.to(torch.int32).view(n_streams, pages_per_stream)  # [S, pages_per_stream]
    # Each stream writes a window of consecutive frames starting anywhere: slots are distinct, the window wraps.
    window = page_size * pages_per_stream
    streams, frames = [], []
    for s in range(n_streams):
        start = int(torch.randint(0, 1000, ()))
        n = int(torch.randint(1, window + 1, ()))
        streams += [s] * n
        frames += range(start, start + n)
    streams += [-1, n_streams, 0]  # skipped: bad stream, bad stream, negative frame
    frames += [0, 0, -5]
    order = torch.randperm(len(streams))
    stream_idx = torch.tensor(streams, dtype=torch.int32, device="cuda")[order.cuda()].contiguous()  # [N]
    frame_pos = torch.tensor(frames, dtype=torch.int64, device="cuda")[order.cuda()].contiguous()  # [N]
    n_rows = len(streams)
    if src_layout == "contiguous":
        src = torch.randn(n_rows, row_elems, device="cuda").to(dtype)  # [N, E]
    elif src_layout == "strided":
        src = torch.randn(n_rows, 3 * row_elems, device="cuda").to(dtype)[:, row_elems: 2 * row_elems]  # [N, E]
    else:
        flat = torch.randn(1 + n_rows * row_elems, device="cuda").to(dtype)
        src = flat[1:].view(n_rows, row_elems)  # [N, E], element-aligned only
    ref = pool.clone()
    skipped = torch.zeros(1, dtype=torch.int32, device="cuda")
    skipped_ref = torch.zeros(1, dtype=torch.int32, device="cuda")
    _ext.write_rows(pool, src, stream_idx, frame_pos, page_table, skipped=skipped)
    _ext.write_rows_ref(ref, src, stream_idx, frame_pos, page_table, skipped=skipped_ref)
    torch.cuda.synchronize()
    assert torch.equal(_as_bits(pool), _as_bits(ref))
    assert skipped.item() == skipped_ref.item() == 3


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_write_rows_gpu_unassigned_pages_skipped(dtype):
    torch.manual_seed(0)
    pool = torch.full((6, 4, 16), float("nan"), dtype=dtype, device="cuda")  # [P, page_size, E]
    page_table = torch.tensor([[3, -1], [6, 0]], dtype=torch.int32, device="cuda")  # [S, 2]; -1 and 6 are not pages
    stream_idx = torch.tensor([0, 0, 1, 1], dtype=torch.int32, device="cuda")  # [N]
    frame_pos = torch.tensor([1, 5, 2, 6], dtype=torch.int64, device="cuda")  # [N]: pages 3, -1, 6, 0
    src = torch.randn(4, 16, device="cuda").to(dtype)  # [N, E]
    ref = pool.clone()
    skipped = torch.zeros(1, dtype=torch.int32, device="cuda")
    _ext.write_rows(pool, src, stream_idx, frame_pos, page_table, skipped=skipped)
    _ext.write_rows_ref(ref, src, stream_idx, frame_pos, page_table)
    torch.cuda.synchronize()
    assert torch.equal(_as_bits(pool), _as_bits(ref))
    assert skipped.item() == 2
    assert torch.equal(_as_bits(pool[3, 1]), _as_bits(src[0])) and torch.equal(_as_bits(pool[0, 2]), _as_bits(src[3]))


@pytest.mark.gpu
def test_wrapper_errors_name_the_bad_value_gpu():
    pool = torch.zeros(4, 2, 8, device="cuda")  # [P, page_size, E]
    ids = torch.zeros(1, dtype=torch.int32, device="cuda")
    with pytest.raises(ValueError, match="page_ids must be int32, got int64"):
        _ext.fill_pages(pool, ids.long(), 0.0)
    with pytest.raises(ValueError, match="pool must be float32 or bfloat16, got float16"):
        _ext.fill_pages(pool.half(), ids, 0.0)
    table = torch.zeros(1, 2, dtype=torch.int32, device="cuda")
    pos = torch.zeros(1, dtype=torch.int64, device="cuda")
    with pytest.raises(ValueError, match=r"src must have shape \[n_rows, E\] with E = pool.shape\[2\] = 8, got \[1, 7\]"):
        _ext.write_rows(pool, torch.zeros(1, 7, device="cuda"), ids, pos, table)
    with pytest.raises(ValueError, match="src must be float32, got bfloat16"):
        _ext.write_rows(pool, torch.zeros(1, 8, device="cuda", dtype=torch.bfloat16), ids, pos, table)
    with pytest.raises(ValueError, match=r"frame_pos must have shape \[n_rows\] = \[1\], got \[2\]"):
        _ext.write_rows(pool, torch.zeros(1, 8, device="cuda"), ids, pos.repeat(2), table)


@pytest.mark.gpu
def test_unsupported_dtype_code_raises_gpu():
    c = _ext.load_extension()
    assert c is not None, _ext.extension_error()
    pool = torch.zeros(2, 4, 8, device="cuda")  # [P, page_size, E]
    ids = torch.zeros(1, dtype=torch.int32, device="cuda")
    pos = torch.zeros(1, dtype=torch.int64, device="cuda")
    table = torch.zeros(1, 1, dtype=torch.int32, device="cuda")
    stream = torch.cuda.current_stream().cuda_stream
    with pytest.raises(ValueError, match="fill_pages: unsupported dtype code 7"):
        c.fill_pages(pool.data_ptr(), 7, 2, 32, ids.data_ptr(), 1, 0.0, 0, stream)
    with pytest.raises(ValueError, match="write_rows: unsupported dtype code 7"):
        c.write_rows(pool.data_ptr(), 7, 2, 4, 8, pool.data_ptr(), 1, 8, ids.data_ptr(), pos.data_ptr(),
                     table.data_ptr(), 1, 1, 1, 0, stream)
