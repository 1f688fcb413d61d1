"""Shared test set-up: the `gpu` marker (skipped without CUDA), float32 matmuls at full precision."""
import os

import pytest
import torch

# Without a GPU the Triton kernels run under Triton's interpreter (on the CPU, in numpy). The variable is read when
# a kernel is decorated, so it is set here, before any test module imports nemotron_engine.kernels.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped cleanly without one)")
    config.addinivalue_line("markers", "nemo: compares against live NeMo (a test-only dependency)")
    config.addinivalue_line("markers", "ray: starts a local Ray cluster (tests/test_serve_ray.py; the last step of scripts/test.sh)")
    # NeMo's streaming script allows TF32 ("high"); parity at 1e-5 needs full fp32 on both sides
    torch.set_float32_matmul_precision("highest")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; none is available")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
