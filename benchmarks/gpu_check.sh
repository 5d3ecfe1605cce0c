#!/usr/bin/env bash
# GPU check: build with CUDA, run the CUDA-relevant tests and the GPU benchmarks.
# Everything goes under "$OUT" (default ./gpu_check_out). Each section appends
# its own tests and benchmarks; a failing section does not stop the others.
set -u
OUT="${OUT:-./gpu_check_out}"
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
status=0

echo "== build" | tee "$OUT/build.log"
LUMO_CUDA=on pip install --no-build-isolation --no-deps . >>"$OUT/build.log" 2>&1 || { echo "build failed (see $OUT/build.log)"; exit 1; }
python -c "import json, lumo_uti.ops as o; print(json.dumps(o.backends(), indent=1, default=str))" >"$OUT/backends.json" 2>&1
# The CPU module links OpenMP expecting torch's libgomp; a CUDA torch that ships
# a hashed copy would load two runtimes side by side. List what got mapped.
python -c "import torch, lumo_uti._C; print(''.join(sorted({l.split()[-1] + chr(10) for l in open('/proc/self/maps') if 'omp' in l.split()[-1]})))" >"$OUT/openmp_libs.txt" 2>&1

run() {  # run NAME CMD...: output to $OUT/NAME.log, remember failures
  local name="$1"; shift
  echo "== $name"
  if ! "$@" >"$OUT/$name.log" 2>&1; then echo "   FAILED (see $OUT/$name.log)"; status=1; fi
}

# -- token_lm (issue 7): row-masked embedding gradient ---------------------------
run tests_rowmask python -m pytest -q -m "not slow" tests/test_ops_rowmask.py tests/test_token_lm.py -p no:cacheprovider
run bench_token_lm python benchmarks/token_lm.py --device cuda --dims 1024,4096 --tokens 8192 --kernel-dims 1024,4096 --reps 10
cp "$OUT/bench_token_lm.log" "$OUT/bench_token_lm.jsonl" 2>/dev/null || true

# -- vq (issue 3): fused VQ search and RVQ; the CPU kernel is the CUDA oracle ------
run tests_vq python -m pytest -q -m "not slow" tests/test_ops_vq.py tests/test_ops_rvq.py -k "cuda" -p no:cacheprovider -rs
run bench_vq python benchmarks/vq.py --device cuda --cases tiny_d8 tiny_d4 large_d256 large_d128 latency_n1 latency_n64 janus_batch rvq_q8 rvq_q32 rvq_mimi --repeat 10
grep '^{' "$OUT/bench_vq.log" >"$OUT/bench_vq.jsonl" 2>/dev/null || true

# -- vlm (issue 8): fused resampler cross-attention -------------------------------
run tests_resampler python -m pytest -q -m "not slow" tests/test_ops_resampler_attention.py tests/test_vlm_resampler.py -p no:cacheprovider
run bench_resampler python benchmarks/resampler.py --device cuda --dtype bfloat16 --batch 1,8,32 --reps 20
cp "$OUT/bench_resampler.log" "$OUT/bench_resampler.jsonl" 2>/dev/null || true
run bench_resampler_fp32 python benchmarks/resampler.py --device cuda --dtype float32 --batch 1,8,32 --reps 20 --skip-connector

exit $status
