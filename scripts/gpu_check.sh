#!/usr/bin/env bash
# One GPU session, start to finish: build the CUDA extension, run the gpu-marked tests (CUDA decoder, Triton kernels
# at full shapes), the kernel and decoder microbenchmarks, the engine end to end on the demo model (Triton + CUDA
# path against the reference, CUDA graphs against the same step run eagerly, then throughput), and the Triton
# kernels' launch-configuration sweeps.
# Writes everything under $OUT (default ./gpu_report) and prints a summary last. Each part has its own time limit
# and the script goes on when one fails. The limits add up to 12 minutes, more than one device command's 600 s, but
# the parts rarely run to them (measured on an H100: three whole runs and two short calls fit in 15 minutes). Run
# it with timeout_s=600: what is under $OUT comes back even when the command is stopped, and the sweeps, last, are
# what a stop would cut.
#
#   bash scripts/gpu_check.sh            # on a machine with an NVIDIA GPU, torch (CUDA), triton, nvcc, cmake
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_report}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
status() { echo "$1: rc=$2 at ${SECONDS}s" | tee -a "$OUT/summary.txt"; }
# at most 8 files under $OUT (what a device run returns): summary.txt, build.log, gpu_tests.log, bench.log (benches
# and the engine runs), bench.json, engine.json, loadtest.json, sweep.json
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv > "$OUT/summary.txt" 2>&1
$PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" \
    >> "$OUT/summary.txt" 2>&1
cat "$OUT/summary.txt"

# 1. build (only the local GPU's architecture: faster than the default sm_80;90 fat binary)
ARCH=$($PY -c "import torch; p = torch.cuda.get_device_capability(); print(f'{p[0]}{p[1]}')")
NEMOTRON_CUDA_ARCHS=${NEMOTRON_CUDA_ARCHS:-$ARCH} timeout ${BUILD_TIMEOUT:-150} $PY -m pip install -q --no-build-isolation --no-deps \
    -e . > "$OUT/build.log" 2>&1
status build $?
# the NeMo harness the tests import (tests/models.py): its own distribution, parity/pyproject.toml
$PY -m pip install -q --no-build-isolation --no-deps -e ./parity >> "$OUT/build.log" 2>&1
status "build parity" $?
$PY -c "from nemotron_engine import _ext; print('extension:', _ext.build_info(), _ext.extension_error())" \
    2>&1 | tee -a "$OUT/build.log"

# 1b. real-time load on the full-size shape (24 x 1024, random weights, calibrated blank bias; built with NeMo by
# the bench's recipe, cached under $LT_CACHE), fp32 and bf16, 80 ms and 1120 ms: chunk latency percentiles and late
# chunks at a few N, live audio on a wall-clock schedule (nemotron-engine loadtest); the demo model if the build fails
LT_CACHE=${LT_CACHE:-/tmp/nemotron-bench-cache}
LT_MODEL=$(timeout ${LT_BUILD_TIMEOUT:-240} $PY -c "
from pathlib import Path
from nemotron_parity.bench import make_shape, prepare_model
print(prepare_model(make_shape('full'), Path('$LT_CACHE')).engine_dir)" 2>> "$OUT/build.log" | tail -1)
status "loadtest model ${LT_MODEL:-weights/demo}" $?
[ -n "$LT_MODEL" ] && [ -f "$LT_MODEL/config.json" ] || LT_MODEL=weights/demo
# bf16 once more with CUDA graphs of the steady step (Engine(graphs=...), captured before the runs)
for variant in float32 bfloat16 "bfloat16 --graphs"; do
    set -- $variant
    dt=$1; shift
    name=$dt${1:+-graphs}
    timeout ${LT_TIMEOUT:-100} nemotron-engine loadtest --model "$LT_MODEL" --device cuda --dtype $dt "$@" \
        --lookahead-ms 80 1120 --streams ${LT_STREAMS:-64 256 1024} --run-s ${LT_RUN_S:-10} --out "$OUT/lt-$name" \
        >> "$OUT/bench.log" 2>&1
    status "loadtest $name" $?
done
$PY -c "
import json, pathlib
out = pathlib.Path('$OUT')
runs = {d.name: json.loads((d / 'loadtest.json').read_text()) for d in sorted(out.glob('lt-*')) if (d / 'loadtest.json').is_file()}
(out / 'loadtest.json').write_text(json.dumps(runs, indent=1))" && rm -rf "$OUT"/lt-*

# 2. gpu-marked tests, one pytest process per file (a crash in one file does not hide the others' results)
: > "$OUT/gpu_tests.log"
# 2a. first the grid-wide decoder kernel (a cooperative launch that has not yet passed on a GPU), on its own and
# briefly: if it fails or hangs, NEMOTRON_SKIP_GRID=1 keeps the benches, the sweep and the engine runs off it
echo "=== tests/test_decoder_cuda.py -k grid_kernel" >> "$OUT/gpu_tests.log"
timeout ${GRID_TEST_TIMEOUT:-90} $PY -m pytest -m gpu tests/test_decoder_cuda.py -k grid_kernel -q -rfE \
    -p no:cacheprovider >> "$OUT/gpu_tests.log" 2>&1
rc=$?
status "gpu_tests grid kernel" $rc
[ $rc -eq 0 ] || export NEMOTRON_SKIP_GRID=1
T_END=$((SECONDS + ${GPU_TEST_TIMEOUT:-200}))
for f in $(ls tests/test_kernels_*.py tests/test_decoder_cuda.py tests/test_bf16.py 2>/dev/null); do
    left=$((T_END - SECONDS)); [ $left -gt 5 ] || { echo "$f: no time left" >> "$OUT/gpu_tests.log"; continue; }
    echo "=== $f" >> "$OUT/gpu_tests.log"
    timeout $left $PY -m pytest -m gpu "$f" -k "not grid_kernel" -q -rfE -p no:cacheprovider --durations=5 \
        >> "$OUT/gpu_tests.log" 2>&1
    status "gpu_tests $f" $?
done
# the extension's import contract and C++ error path (no gpu mark: here they also run after torch's CUDA init)
echo "=== tests/test_extension.py" >> "$OUT/gpu_tests.log"
timeout 60 $PY -m pytest tests/test_extension.py -q -rfE -p no:cacheprovider >> "$OUT/gpu_tests.log" 2>&1
status "gpu_tests tests/test_extension.py" $?
grep -E "^=== |passed|failed|error" "$OUT/gpu_tests.log"

# 2b. how the raw module reports bad arguments (a C++ std::invalid_argument -> ValueError), in a child process
$PY -X faulthandler -c "
import torch
from nemotron_engine import _ext
c = _ext.load_extension()
torch.zeros(1, device='cuda').add_(1)  # torch initialises CUDA first, as in the engine
for name, call in [('rnnt_greedy', lambda: c.rnnt_greedy(0, 0, 0, 0, 0, 0, 0, 0, 0, [0], [0], [0], [0], 0, 0, 0, 0, 0,
                                                         0, 0, 7, 1, 1, 1, 1, 1, 1, 2, 1, 1, 0, 0)),
                   ('rnnt_grid_workspace_bytes', lambda: c.rnnt_grid_workspace_bytes(2**40, 640, 640, 1))]:
    try:
        call(); print(name, 'returned')
    except Exception as e:
        print(name, type(e).__name__, str(e)[:120])
" >> "$OUT/gpu_tests.log" 2>&1
status "raw-module errors" $?

# 2c. the same question on a minimal module (an optional diagnostic carried in .gpu_carry/exc, not in the repo)
[ -f .gpu_carry/exc/run.sh ] && bash .gpu_carry/exc/run.sh >> "$OUT/gpu_tests.log" 2>&1

# 3. the engine end to end on the shipped demo model
MODEL=${GPU_MODEL:-weights/demo}
if [ -d "$MODEL" ]; then
    # the main job on the GPU, as a user runs it (bench/gpu_engine.py below also runs the grid decoder)
    timeout 60 bash scripts/demo.sh --device cuda --model "$MODEL" >> "$OUT/bench.log" 2>&1
    status "demo.sh --device cuda" $?
    timeout ${ENGINE_TIMEOUT:-90} $PY bench/gpu_engine.py "$MODEL" "$MODEL"/examples/*.wav \
        --json "$OUT/engine.json" >> "$OUT/bench.log" 2>&1
    status engine $?
fi

# 4. microbenchmarks (kernels, decoder); BENCHES="" skips them
BENCHES=${BENCHES-$(ls bench/bench_kernels_*.py bench/bench_decoder.py 2>/dev/null)}
[ -n "$BENCHES" ] && \
timeout ${BENCH_TIMEOUT:-120} $PY -m pytest $BENCHES -q -s -p no:cacheprovider --benchmark-json="$OUT/bench.json" \
    > "$OUT/bench.log" 2>&1
[ -n "$BENCHES" ] && status bench $?

# 5. the Triton kernels' launch-configuration sweeps (attention first); SWEEP=0 skips them
if [ "${SWEEP:-1}" != 0 ]; then
    echo "== kernel sweeps" >> "$OUT/bench.log"
    timeout ${SWEEP_TIMEOUT:-150} $PY bench/sweep_kernels.py --json "$OUT/sweep.json" >> "$OUT/bench.log" 2>&1
    status sweep $?
fi

echo "== summary =="
cat "$OUT/summary.txt"
tail -12 "$OUT/bench.log" 2>/dev/null
grep -vE "^(bench|tests)/.*(PASSED|SKIPPED)|^\s*$" "$OUT/bench.log" | tail -110
