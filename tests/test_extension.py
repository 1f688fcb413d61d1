"""The CUDA extension nemotron_engine._C: build/import contract and the C++ error path (runs everywhere).

Its one kernel, rnnt_greedy, is held to its reference in tests/test_decoder_cuda.py.
"""

import importlib
import os
import shutil

import pytest
import torch

from nemotron_engine import _ext


def _find_nvcc():
    """The same search as setup.py: PATH, $CUDA_HOME/bin, /usr/local/cuda/bin."""
    candidates = [shutil.which("nvcc"), os.path.join(os.environ.get("CUDA_HOME", "/nonexistent"), "bin", "nvcc"),
                  "/usr/local/cuda/bin/nvcc"]
    return next((p for p in candidates if p and os.path.isfile(p) and os.access(p, os.X_OK)), None)


def _build_skipped_on_purpose():
    info = _ext.build_info()
    return info is not None and not info.get("built", False) and "NEMOTRON_SKIP_CUDA_BUILD" in info.get("reason", "")


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
        c.rnnt_greedy(0, 0, 0, 0, 0, 0, 0, 0, 0, [0], [0], [0], [0], 0, 0, 0, 0, 0, 0, 0, c.DTYPE_BFLOAT16, 1, 1, 1,
                      1, 1, 1, 2, 1, 1, 0, 0)


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
    # rnnt_grid_workspace_bytes checks its arguments without touching CUDA
    for layers in (0, -5, 2**40):
        with pytest.raises(ValueError, match=rf"^nemotron_engine\._C: rnnt_grid_workspace_bytes: need 1 <= layers <= "
                                             rf"8, hidden >= 1, joint_hidden >= 1; got {layers}, 640, 7$"):
            c.rnnt_grid_workspace_bytes(layers, 640, 7, 1)
