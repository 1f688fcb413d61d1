"""Fixtures of the pytest-benchmark benches: the benchmark model (built once and cached), the engine, NeMo.

    python -m pytest bench/bench_engine.py [--bench-size tiny|full] [--bench-layers N] [--bench-rounds R]
                                           [--bench-cache-dir DIR] [--bench-audio-s S] [--bench-threads T]

The size defaults to $NEMOTRON_BENCH_SIZE or "tiny" (a quick run); "full" is the Nemotron shape, built on the
first run (minutes) and cached under --bench-cache-dir ($NEMOTRON_BENCH_CACHE, ~/.cache/nemotron_engine/bench).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from nemotron_parity import bench as B


def pytest_addoption(parser):
    g = parser.getgroup("nemotron bench")
    g.addoption("--bench-size", default=os.environ.get("NEMOTRON_BENCH_SIZE", "tiny"), choices=sorted(B.SIZES))
    g.addoption("--bench-layers", type=int, default=None, help="override the number of encoder layers")
    g.addoption("--bench-rounds", type=int, default=5, help="timed rounds per case")
    g.addoption("--bench-cache-dir", default=None, help="model/audio cache (default $NEMOTRON_BENCH_CACHE)")
    g.addoption("--bench-audio-s", type=float, default=6.0, help="seconds of speech per stream")
    g.addoption("--bench-threads", type=int, default=None, help="torch threads (default: torch's default)")


def pytest_collect_file(file_path, parent):
    # bench_*.py files do not match pytest's default test_*.py pattern: collect them when this folder is named on
    # the command line (`pytest bench`), never from a bare `pytest` at the root
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and parent.session.isinitpath(file_path.parent) and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_configure(config):
    torch.set_float32_matmul_precision("highest")
    threads = config.getoption("--bench-threads", None)
    if threads:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def bench_cache_dir(request) -> Path:
    d = request.config.getoption("--bench-cache-dir")
    return Path(d) if d else B.default_cache_dir()


@pytest.fixture(scope="session")
def bench_prepared(request, bench_cache_dir) -> B.Prepared:
    shape = B.make_shape(request.config.getoption("--bench-size"), layers=request.config.getoption("--bench-layers"))
    return B.prepare_model(shape, bench_cache_dir, keep_nemo_model=B.nemo_available())


@pytest.fixture(scope="session")
def bench_engine(bench_prepared):
    from nemotron_engine.engine import Engine

    return Engine(bench_prepared.engine_dir)


@pytest.fixture(scope="session")
def bench_nemo(bench_prepared):
    if not B.nemo_available():
        pytest.skip("NeMo is not installed: the nemo provider is not benchmarked")
    return B.load_nemo_model(bench_prepared)


@pytest.fixture(scope="session")
def bench_audios(request, bench_cache_dir):
    """A function n -> n signals of --bench-audio-s seconds."""
    seconds = request.config.getoption("--bench-audio-s")
    cache: dict[int, list] = {}

    def get(n: int):
        if n not in cache:
            cache[n] = B.bench_audio(bench_cache_dir, n, seconds)
        return cache[n]

    return get
