#!/usr/bin/env bash
# One lent-GPU session: first the GPU latency table (benchmarks/bench_gpu_latency.py, alone on the GPU), then
# gpu_check.py, then the DeepForest protocol grid (examples/deepforest/run.py) until a deadline,
# packing the small outputs (manifests, logs, eval curves, lite generators) into $OUT every 30 s, so that a run cut
# off by the deadline still returns everything finished so far (every run resumes from its checkpoint elsewhere).
# Usage: OUT=/some/dir bash benchmarks/gpu_session.sh SECONDS_FOR_EVERYTHING [data cache dir] [extra run.py args]
# Environment: GPU_CHECK_ARGS (default "--repeats 15 --skip-latency": bench_gpu_latency.py measures latency);
# GPU_CHECK_PARALLEL=1 runs gpu_check beside the grid instead of before it; SEED_WORK=DIR copies finished runs
# (manifests, generators) of an earlier session into the work dir; LATENCY_SECONDS (default 300) caps the latency run.
set -u
budget=${1:-540}; cache=${2:-.gpu/cache}; shift 2 || true
start=$(date +%s)
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 MPLBACKEND=Agg
work=/tmp/deepforest_grid
mkdir -p "$OUT" "$work"
if [ -n "${SEED_WORK:-}" ]; then cp -r "$SEED_WORK/." "$work/"; fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu_check.txt"
# Latency first, before anything else shares the GPU. Its gpu_latency.md and .json go to the work dir, so they come
# back inside grid.tgz and add no file to $OUT (at most 8 come back; the checkpoint parts below take most of them);
# the printed table goes into gpu_check.txt. PYTHONPATH: the device's python3 has torch, not this package.
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" timeout "${LATENCY_SECONDS:-300}" python3 benchmarks/bench_gpu_latency.py \
    --device cuda --out "$work/gpu_latency" --no-write >>"$OUT/gpu_check.txt" 2>&1
echo "bench_gpu_latency exit $? after $(( $(date +%s) - start )) s" >>"$OUT/gpu_check.txt"
check() {
    timeout 200 python3 benchmarks/gpu_check.py ${GPU_CHECK_ARGS:---repeats 15 --skip-latency} >>"$OUT/gpu_check.txt" 2>&1
    echo "gpu_check exit $? after $(( $(date +%s) - start )) s" >>"$OUT/gpu_check.txt"
}
if [ "${GPU_CHECK_PARALLEL:-0}" = 1 ]; then check & else check; fi

pack() {
    tar czf "$OUT/grid.tgz.tmp" -C "$work" --exclude='data' --exclude='checkpoint.safetensors' \
        --exclude='trainer_state.pt' --exclude='rng_state_*' --exclude='discriminator' \
        --exclude='*paper*/generator' --exclude='*paper*/generator/*' . 2>/dev/null && mv "$OUT/grid.tgz.tmp" "$OUT/grid.tgz"
}
( while sleep "${PACK_EVERY:-30}"; do pack; done ) &
packer=$!
left=$(( budget - ($(date +%s) - start) - 45 ))
echo "grid: $left s" >"$work/grid.log"
timeout "$left" python3 examples/deepforest/run.py --work-dir "$work" --cache-dir "$cache" --device cuda "$@" \
    >>"$work/grid.log" 2>&1
echo "grid exit $? after $(( $(date +%s) - start )) s" >>"$work/grid.log"
kill $packer 2>/dev/null
wait
pack
# The converged A1 detector and the stage-1 paper generator of seed 0, in float16, split under the 16 MiB file limit.
python3 - "$work" "$OUT" <<'PY'
import sys
from pathlib import Path

import safetensors.torch as st

work, out = Path(sys.argv[1]), Path(sys.argv[2])
for name, path in (("A1", work / "seed0/A1/checkpoint.safetensors"),
                   ("stage1_paper_G", work / "seed0/stage1-paper/generator/model.safetensors")):
    if not path.is_file():
        continue
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in st.load_file(str(path)).items()}
    data = st.save(state)
    for index in range(0, len(data), 15 * 2**20):
        (out / f"{name}.fp16.safetensors.part{index // (15 * 2**20)}").write_bytes(data[index:index + 15 * 2**20])
PY
ls -la "$OUT"
