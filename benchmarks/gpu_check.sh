#!/usr/bin/env bash
# GPU check: build with CUDA, run the CUDA-relevant tests and the GPU benchmarks.
# Everything goes under "$OUT" (default ./gpu_check_out). Each section appends
# its own tests and benchmarks; a failing section does not stop the others.
set -u
OUT="${OUT:-./gpu_check_out}"
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
status=0
START=$(date +%s)

echo "== build" | tee "$OUT/build.log"
timeout 300 env LUMO_CUDA=on pip install --no-build-isolation --no-deps . >>"$OUT/build.log" 2>&1 || { echo "build failed or timed out (see $OUT/build.log)"; exit 1; }
python -c "import json, lumo_uti.ops as o; print(json.dumps(o.backends(), indent=1, default=str))" >"$OUT/backends.json" 2>&1
# The CPU module links OpenMP expecting torch's libgomp; a CUDA torch that ships
# a hashed copy would load two runtimes side by side. List what got mapped.
python -c "import torch, lumo_uti._C; print(''.join(sorted({l.split()[-1] + chr(10) for l in open('/proc/self/maps') if 'omp' in l.split()[-1]})))" >"$OUT/openmp_libs.txt" 2>&1

# GPU time is usually lent in short slots: every step has its own time limit,
# and once GPU_CHECK_DEADLINE seconds (default 540) have passed since the start
# (the build included) the remaining steps are skipped, so the script always
# returns with what it measured. $OUT/steps.tsv lists each step's status and time.
DEADLINE=${GPU_CHECK_DEADLINE:-540}
STEP_LIMIT=${GPU_CHECK_STEP_LIMIT:-240}
printf 'step\tstatus\tseconds\n' >"$OUT/steps.tsv"

run() {  # run NAME CMD...: output to $OUT/NAME.log, remember failures
  local name="$1"; shift
  local now=$(( $(date +%s) - START ))
  if (( now >= DEADLINE )); then
    echo "== $name: SKIPPED (deadline ${DEADLINE}s reached at ${now}s)"
    printf '%s\tskipped\t0\n' "$name" >>"$OUT/steps.tsv"
    status=1
    return
  fi
  local limit=$(( DEADLINE - now < STEP_LIMIT ? DEADLINE - now : STEP_LIMIT ))
  echo "== $name (limit ${limit}s)"
  local t0=$(date +%s) rc=0
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1 || rc=$?
  local took=$(( $(date +%s) - t0 ))
  if (( rc == 124 )); then
    echo "   TIMED OUT after ${limit}s (see $OUT/$name.log)"; status=1
    printf '%s\ttimeout\t%s\n' "$name" "$took" >>"$OUT/steps.tsv"
  elif (( rc != 0 )); then
    echo "   FAILED (see $OUT/$name.log)"; status=1
    printf '%s\tfailed\t%s\n' "$name" "$took" >>"$OUT/steps.tsv"
  else
    printf '%s\tok\t%s\n' "$name" "$took" >>"$OUT/steps.tsv"
  fi
}

# Tests first (they decide whether the kernels are right), then the benchmarks,
# most important first, so a deadline cuts the least important part.
# The CPU kernel is the oracle of every CUDA test.
run tests_vq python -m pytest -q -m "not slow" tests/test_ops_vq.py tests/test_ops_rvq.py -k "cuda" -p no:cacheprovider -rs
run tests_resampler python -m pytest -q -m "not slow" tests/test_ops_resampler_attention.py tests/test_vlm_resampler.py -p no:cacheprovider
run tests_rowmask python -m pytest -q -m "not slow" tests/test_ops_rowmask.py tests/test_token_lm.py -p no:cacheprovider
if [[ -f tests/test_ops_rows_ce.py ]]; then
  run tests_rows_ce python -m pytest -q -m "not slow" tests/test_ops_rows_ce.py -p no:cacheprovider
fi
run tests_classify python -m pytest -q -m "not slow" tests/test_ops_classify.py tests/test_build.py -p no:cacheprovider

# -- datasets: lumo tokenize-dataset --device cuda on a small generated corpus -----
# 16 captioned 256 x 256 PNGs; the same corpus on the CPU for comparison
# ($OUT/dataset_gpu.txt says whether the shards are byte-identical).
CORPUS="$OUT/dataset_corpus"
python - "$CORPUS" >"$OUT/dataset_corpus.log" 2>&1 <<'PY'
import json, sys
from pathlib import Path
import numpy as np
from PIL import Image
root = Path(sys.argv[1]); root.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
with open(root / "corpus.jsonl", "w") as f:
    for i in range(16):
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(root / f"img{i}.png")
        f.write(json.dumps([f"picture number {i}", {"image": f"img{i}.png"}]) + "\n")
PY
run dataset_gpu lumo tokenize-dataset "$CORPUS/corpus.jsonl" --out "$CORPUS/shards_cuda" --device cuda
run dataset_cpu lumo tokenize-dataset "$CORPUS/corpus.jsonl" --out "$CORPUS/shards_cpu" --device cpu
if diff -r -q "$CORPUS/shards_cuda" "$CORPUS/shards_cpu" >"$OUT/dataset_gpu.txt" 2>&1; then
  echo "shards identical on cuda and cpu" >>"$OUT/dataset_gpu.txt"
fi
rm -f "$CORPUS"/img*.png

# -- rows_ce: fused rows-only linear cross-entropy ---------------------------------
if [[ -f benchmarks/rows_ce.py ]]; then
  run bench_rows_ce python benchmarks/rows_ce.py --device cuda --dim 4096 --tokens 8192 --dtype bfloat16
  grep '^{' "$OUT/bench_rows_ce.log" >"$OUT/bench_rows_ce.jsonl" 2>/dev/null || true
else
  echo "== bench_rows_ce: skipped (benchmarks/rows_ce.py is missing)"
fi

# -- vq: fused VQ search and RVQ -------------------------------------------------
run bench_vq python benchmarks/vq.py --device cuda --cases tiny_d8 tiny_d4 large_d256 large_d128 latency_n1 latency_n64 janus_batch rvq_q8 rvq_q32 rvq_mimi --repeat 10
grep '^{' "$OUT/bench_vq.log" >"$OUT/bench_vq.jsonl" 2>/dev/null || true

# -- vlm: fused resampler cross-attention ----------------------------------------
run bench_resampler python benchmarks/resampler.py --device cuda --dtype bfloat16 --batch 1,8,32 --reps 20
cp "$OUT/bench_resampler.log" "$OUT/bench_resampler.jsonl" 2>/dev/null || true
run bench_resampler_fp32 python benchmarks/resampler.py --device cuda --dtype float32 --batch 1,8,32 --reps 20 --skip-connector

# -- token_lm: row-masked embedding gradient -------------------------------------
run bench_token_lm python benchmarks/token_lm.py --device cuda --dims 1024,4096 --tokens 8192 --kernel-dims 1024,4096 --reps 10
cp "$OUT/bench_token_lm.log" "$OUT/bench_token_lm.jsonl" 2>/dev/null || true

# -- datasets: tokenize-dataset with the codecs on the GPU -------------------------
run bench_tokenize_dataset python benchmarks/tokenize_dataset.py --cases gpu --images 256 --gpu-batch 64
grep '^{' "$OUT/bench_tokenize_dataset.log" >"$OUT/bench_tokenize_dataset.jsonl" 2>/dev/null || true

exit $status
