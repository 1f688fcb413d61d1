"""Drives the CMake build of nemotron_engine._C; metadata and packages live in pyproject.toml.

    pip install -e .                              # editable; builds the CUDA module in place (nemotron_engine/_C*.so)
    pip install .                                 # wheel install; same build
    NEMOTRON_SKIP_CUDA_BUILD=1 pip install -e .   # CPU-only: no CUDA module, the engine uses torch/Triton ops

Environment:
    NEMOTRON_SKIP_CUDA_BUILD=1   skip the CUDA build (it is also skipped, with a message, when nvcc is not found)
    NEMOTRON_CUDA_ARCHS="80;90"  CUDA architectures (CMAKE_CUDA_ARCHITECTURES), default "80;90"
    NEMOTRON_BUILD_TYPE=Release  CMAKE_BUILD_TYPE
    MAX_JOBS=N                   parallel compile jobs, default: the number of usable cores
    CUDA_HOME                    where to look for bin/nvcc when it is not on PATH

When nvcc is found and the build fails, the install fails: a compile error must fail CI.

Editable installs and package_dir: setuptools (>= 64, PEP 660, default "lenient" mode) installs a meta-path finder
whose mapping holds every package root that is not nested in its parent's directory, so nemotron_engine.kernels ->
kernels/ and nemotron_engine.weights -> weights/ resolve, and the bare `kernels` / `weights` do not (checked for
`pip install -e .` and `pip install .`; `editable_mode=compat` would NOT work here: it puts the repo root on sys.path,
which exposes the bare names and not the mapped ones). The finder only sees packages listed in pyproject.toml, and
only answers after the normal path search fails: a module nemotron_engine/kernels.py or nemotron_engine/weights.py
would shadow the mapped package in editable installs but not in wheels, so check_no_shadowing() refuses to build.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
INFO_NAME = "_C_build.json"  # next to _C*.so; nemotron_engine._ext reads it to say why _C is missing


def find_nvcc():
    """nvcc on PATH, then $CUDA_HOME/bin, then /usr/local/cuda/bin; None when absent."""
    candidates = [shutil.which("nvcc")]
    if os.environ.get("CUDA_HOME"):
        candidates.append(os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc"))
    candidates.append("/usr/local/cuda/bin/nvcc")
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def check_no_shadowing():
    for name in ("kernels", "weights"):
        module = ROOT / "nemotron_engine" / f"{name}.py"
        if module.exists():
            raise SystemExit(
                f"error: {module.relative_to(ROOT)} clashes with the package nemotron_engine.{name}, which setup "
                f"installs from {name}/ (pyproject.toml [tool.setuptools.package-dir]); the module would win in "
                f"editable installs and the package in wheels. Rename the module."
            )


def skip_reason():
    if os.environ.get("NEMOTRON_SKIP_CUDA_BUILD", "").strip().lower() in ("1", "true", "yes", "on"):
        return "NEMOTRON_SKIP_CUDA_BUILD was set"
    if find_nvcc() is None:
        return "nvcc not found (looked on PATH, in $CUDA_HOME/bin and /usr/local/cuda/bin)"
    return None


def num_jobs():
    if os.environ.get("MAX_JOBS"):
        return int(os.environ["MAX_JOBS"])
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class CMakeExtension(Extension):
    def __init__(self, name):
        # No sources: CMakeLists.txt owns the source list.
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def run(self):
        reason = skip_reason()
        if reason is not None:
            print(f"nemotron-engine: not building the CUDA extension nemotron_engine._C: {reason}", file=sys.stderr)
            self._remove_stale_modules()
            info = {"built": False, "reason": reason}
            self._write_info(Path(self.build_lib) / "nemotron_engine", info)
            if self.inplace or self.editable_mode:
                self._write_info(ROOT / "nemotron_engine", info)
            return
        super().run()

    def build_extension(self, ext):
        nvcc = find_nvcc()
        ext_path = Path(self.get_ext_fullpath(ext.name)).resolve()
        out_dir = ext_path.parent
        out_dir.mkdir(parents=True, exist_ok=True)
        archs = os.environ.get("NEMOTRON_CUDA_ARCHS", "").strip() or "80;90"
        build_type = os.environ.get("NEMOTRON_BUILD_TYPE", "Release")
        # A persistent build dir keeps rebuilds incremental (pip's editable builds use a fresh build_temp each time).
        # One per interpreter (a venv and the system python do not share a CMake cache).
        tag = hashlib.sha1(sys.executable.encode()).hexdigest()[:8]
        build_dir = ROOT / "build" / f"cmake-{sys.implementation.cache_tag}-{build_type.lower()}-{tag}"
        build_dir.mkdir(parents=True, exist_ok=True)

        configure = [
            "cmake", "-S", str(ROOT), "-B", str(build_dir),
            f"-DCMAKE_BUILD_TYPE={build_type}",
            f"-DCMAKE_CUDA_COMPILER={nvcc}",
            f"-DCMAKE_CUDA_ARCHITECTURES={archs}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DNEMOTRON_OUTPUT_DIR={out_dir}",
        ]
        cache = build_dir / "CMakeCache.txt"
        generator = "Ninja" if shutil.which("ninja") else "Unix Makefiles"
        if cache.exists() and f"CMAKE_GENERATOR:INTERNAL={generator}\n" not in cache.read_text():
            shutil.rmtree(build_dir)  # a cache made with another generator cannot be reused
            build_dir.mkdir(parents=True)
        configure += ["-G", generator]
        build = ["cmake", "--build", str(build_dir), "--config", build_type, "--parallel", str(num_jobs())]

        print(f"nemotron-engine: building nemotron_engine._C with {nvcc} for CUDA archs {archs} "
              f"({generator}, {num_jobs()} jobs)", file=sys.stderr)
        start = time.time()
        try:
            subprocess.run(configure, check=True)
            subprocess.run(build, check=True)
        except (subprocess.CalledProcessError, FileNotFoundError) as err:
            raise SystemExit(
                f"error: building the CUDA extension nemotron_engine._C failed ({err}). Fix the error above, or set "
                f"NEMOTRON_SKIP_CUDA_BUILD=1 to install without it (CPU-only)."
            ) from err
        if not ext_path.exists():
            raise SystemExit(f"error: CMake finished but {ext_path} was not produced")
        self._write_info(out_dir, {
            "built": True, "nvcc": nvcc, "cuda_archs": archs, "build_type": build_type,
            "build_seconds": round(time.time() - start, 1),
        })

    def copy_extensions_to_source(self):
        super().copy_extensions_to_source()
        info = Path(self.build_lib) / "nemotron_engine" / INFO_NAME
        if info.exists():
            shutil.copyfile(info, ROOT / "nemotron_engine" / INFO_NAME)

    def _remove_stale_modules(self):
        """A skipped build leaves no _C behind: neither in build/lib (which an in-tree `pip install .` would ship
        again) nor, for editable installs, in the source tree."""
        build_pkg = Path(self.build_lib) / "nemotron_engine"
        for stale in [*build_pkg.glob("_C.*.so"), *(ROOT / "nemotron_engine").glob("_C.*.so")]:
            if stale.parent == build_pkg or self.inplace or self.editable_mode:
                print(f"nemotron-engine: removing {stale} from an earlier build", file=sys.stderr)
                stale.unlink()

    @staticmethod
    def _write_info(directory, info):
        directory.mkdir(parents=True, exist_ok=True)
        (directory / INFO_NAME).write_text(json.dumps(info, indent=1) + "\n")


check_no_shadowing()
setup(
    ext_modules=[CMakeExtension("nemotron_engine._C")],
    cmdclass={"build_ext": CMakeBuild},
)
