#!/usr/bin/env bash
# resdepth's GPU check: the GPU-only tests, then throughput, in one call of at most 8 minutes on one H100 or H200.
#
#   bash benchmarks/gpu_bench.sh                 # synthetic images of CIFAR-10's size (50k train, 10k test)
#   CIFAR_DIR=/path/to/cifar bash benchmarks/gpu_bench.sh   # CIFAR-10 (torchvision's cifar-10-batches-py) instead
#   DEVICE=cpu DEPTHS=8 BENCH_ITERS=3 WARMUP=1 CONC_STEPS=3 WORKERS=1 TRAIN_ITERS=40 SYNTH_TRAIN=512 SYNTH_TEST=64 \
#     FUSE_DEPTHS=8 FUSE_SIZES=1,2 FUSE_ITERS=2 \
#     PY=.venv/bin/python bash benchmarks/gpu_bench.sh   # a CPU smoke test of the script itself (a few minutes)
#
# Results go to $OUT (the device tool's folder; else ./gpu-bench-out), at most 15 files: env.txt, gpu-tests.log,
#   bench.log + bench.json, graph.log + graph.json, concurrent.log + concurrent.json, fused.log + fused.json,
#   fused-bf16.log + fused-bf16.json, train.log + metrics.csv, summary.txt.
# Steps, each with its own time limit, cheapest first, so that a slow step cannot starve the later ones:
#   1. environment, and the GPU-only tests (tests/test_gpu.py: resume after SIGKILL, CUDA graph
#      vs eager and resumed, the last visible GPU, bf16, 2 jobs per GPU, memory released,
#      fused seeds vs their own runs)                                                       <= 120 s
#   2. resdepth bench: depths 20/56/110, resdepth vs the naive PIL + DataLoader recipe     <= 90 s
#   2b. the same with --cuda-graph (no naive recipe)                                        <= 45 s
#   3. 1, 2 and 4 concurrent jobs per GPU x depths 20/56/110, aggregate img/s, and the
#      Figure 6 sweep time EXTRAPOLATED from them (rows kept as they are measured)         <= 75 s
#   3b. --fuse: one fused job of K seeds vs one run (= K in sequence), ResNet-20 and -56,
#      K = 1, 2, 4, 8, 16, tf32 (the CUDA default); step 3 gives K processes at K = 2, 4  <= 70 s
#   3c. the same in bf16                                                                   <= 40 s
#      and the Table 6 sweep time (5 seeds x 20..110, 64k iterations) EXTRAPOLATED from 3b
#   4. a full 64k-iteration ResNet-20 run (`resdepth train`, the defaults: tf32, channels_last,
#      fused SGD; --cuda-graph if 2b measured it faster at depth 20), cut at the time left;
#      a cut run reports how far it got and its pace                                       the rest
#      (30 s at least, else skipped: steps 1-3c take about 5-6 minutes when each uses all its time)
set -u
START=$(date +%s)
BUDGET=${BUDGET:-465}  # seconds for the whole script: under 8 minutes, leaving time to copy $OUT off the machine
OUT=${OUT:-gpu-bench-out}
PY=${PY:-python3}  # a python with torch, torchvision, typer, rich, pandas and pytest
DEVICE=${DEVICE:-cuda} DEPTHS=${DEPTHS:-20,56,110} WORKERS=${WORKERS:-8}  # 8 of the 16 cores load the naive recipe
BENCH_ITERS=${BENCH_ITERS:-200} WARMUP=${WARMUP:-30} CONC_STEPS=${CONC_STEPS:-150}
TRAIN_ITERS=${TRAIN_ITERS:-64000} SYNTH_TRAIN=${SYNTH_TRAIN:-50000} SYNTH_TEST=${SYNTH_TEST:-10000}
FUSE_DEPTHS=${FUSE_DEPTHS:-20,56} FUSE_SIZES=${FUSE_SIZES:-1,2,4,8,16} FUSE_ITERS=${FUSE_ITERS:-50}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 COLUMNS=160
RESDEPTH="$PY -m resdepth.cli"
left() { echo $((BUDGET - ($(date +%s) - START))); }

if [ -n "${CIFAR_DIR:-}" ]; then
  BENCH_DATA=(--data-dir "$CIFAR_DIR")
  TRAIN_DATA=(--dataset cifar10 --data-dir "$CIFAR_DIR")
else
  BENCH_DATA=()
  TRAIN_DATA=(--dataset synthetic --synthetic-train "$SYNTH_TRAIN" --synthetic-test "$SYNTH_TEST")
fi

# 1. environment
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  nproc; grep -m1 "model name" /proc/cpuinfo
  $PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cudnn', torch.backends.cudnn.version())"
  git rev-parse HEAD 2>/dev/null; git status --short 2>/dev/null | head -20; } > "$OUT/env.txt" 2>&1

# 1b. the tests that need a GPU (they skip on CPU-only machines, so they run only here)
timeout 120 $PY -m pytest -q -p no:cacheprovider -rs tests/test_gpu.py > "$OUT/gpu-tests.log" 2>&1
echo "gpu tests exit $? at $(( $(date +%s) - START )) s" >> "$OUT/gpu-tests.log"

# 2. resdepth vs the naive recipe, alternating in one process
timeout 90 $RESDEPTH bench --device "$DEVICE" --depths "$DEPTHS" --iterations "$BENCH_ITERS" --warmup "$WARMUP" \
  --rounds 3 --num-workers "$WORKERS" "${BENCH_DATA[@]}" --json "$OUT/bench.json" > "$OUT/bench.log" 2>&1
echo "bench exit $? at $(( $(date +%s) - START )) s" >> "$OUT/bench.log"

# 2b. the training step captured as one CUDA graph
timeout 45 $RESDEPTH bench --device "$DEVICE" --depths "$DEPTHS" --iterations "$BENCH_ITERS" --warmup "$WARMUP" \
  --rounds 2 --no-naive --cuda-graph "${BENCH_DATA[@]}" --json "$OUT/graph.json" > "$OUT/graph.log" 2>&1
echo "graph bench exit $? at $(( $(date +%s) - START )) s" >> "$OUT/graph.log"

# 3. concurrent jobs per GPU, and the extrapolated Figure 6 sweep time
timeout 75 $PY benchmarks/concurrent_throughput.py --device "$DEVICE" --jobs 1,2,4 --depths "$DEPTHS" \
  --steps "$CONC_STEPS" --warmup "$WARMUP" --timeout 65 --out "$OUT/concurrent.json" > "$OUT/concurrent.log" 2>&1
echo "concurrent exit $? at $(( $(date +%s) - START )) s" >> "$OUT/concurrent.log"

# 3b, 3c. fused seeds (--fuse): one job of K models against one run, alternating windows in one process
timeout 70 $RESDEPTH bench --device "$DEVICE" --depths "$FUSE_DEPTHS" --fuse "$FUSE_SIZES" --no-processes \
  --iterations "$FUSE_ITERS" --warmup "$WARMUP" --rounds 2 --json "$OUT/fused.json" > "$OUT/fused.log" 2>&1
echo "fused bench exit $? at $(( $(date +%s) - START )) s" >> "$OUT/fused.log"
timeout 40 $RESDEPTH bench --device "$DEVICE" --depths "$FUSE_DEPTHS" --fuse "$FUSE_SIZES" --no-processes \
  --precision bf16 --iterations "$FUSE_ITERS" --warmup "$WARMUP" --rounds 2 --json "$OUT/fused-bf16.json" \
  > "$OUT/fused-bf16.log" 2>&1
echo "fused bf16 bench exit $? at $(( $(date +%s) - START )) s" >> "$OUT/fused-bf16.log"

# 4. the full paper-length ResNet-20 run, in whatever time is left (10 s kept for the summary)
RUN_DIR=$(mktemp -d)/resnet20
TRAIN_SECONDS=$(( $(left) - 10 ))
GRAPH=$($PY - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
def ips(name):
    try:
        rows = json.loads((Path(sys.argv[1]) / name).read_text())["rows"]
    except (OSError, ValueError, KeyError):
        return 0
    return next((r["resdepth_images_per_second"] for r in rows if r["depth"] == 20), 0)
print("--cuda-graph" if ips("graph.json") > ips("bench.json") > 0 else "")
EOF
)
if [ "$TRAIN_SECONDS" -gt 30 ]; then
  echo "resdepth train ${GRAPH:-(eager step)}" > "$OUT/train.log"
  timeout --signal=TERM "$TRAIN_SECONDS" $RESDEPTH train --depth 20 --kind residual --device "$DEVICE" --iterations "$TRAIN_ITERS" \
    "${TRAIN_DATA[@]}" $GRAPH --out "$RUN_DIR" >> "$OUT/train.log" 2>&1
  echo "train exit $? after a limit of $TRAIN_SECONDS s" >> "$OUT/train.log"
  cp "$(find "$RUN_DIR" -name metrics.csv | head -1)" "$OUT/metrics.csv" 2>/dev/null
else
  echo "no time left for the 64k run" > "$OUT/train.log"
fi

# 5. one summary: the bench table, the concurrency rows, the fused rows, the run's pace and the (labelled)
#    extrapolations
$PY - "$OUT" "$TRAIN_ITERS" > "$OUT/summary.txt" 2>&1 <<'EOF'
import json, math, sys
from pathlib import Path
out, iterations = Path(sys.argv[1]), int(sys.argv[2])
def load(name):
    try:
        return json.loads((out / name).read_text())
    except (OSError, ValueError):
        return None
def step_seconds(rows, depth, k):
    """Seconds per step of a fused job of k at this depth: measured K (the next measured K >= k bounds it from
    above), linear in depth between measured depths and proportional to depth beyond them."""
    size = min(s for s in {r["models"] for r in rows} if s >= k)
    measured = sorted((r["depth"], 128 * r["models"] / r["fused_images_per_second"]) for r in rows
                      if r["models"] == size)
    for (d0, t0), (d1, t1) in zip(measured, measured[1:]):
        if d0 <= depth <= d1:
            return t0 + (t1 - t0) * (depth - d0) / (d1 - d0)
    (d0, t0), (d1, t1) = measured[0], measured[-1]
    return t0 * depth / d0 if depth < d0 else t1 * depth / d1
for name in ("bench.json", "graph.json"):
    bench = load(name)
    for r in (bench or {}).get("rows", []):
        print(f"bench{' --cuda-graph' if r.get('cuda_graph') else ''} depth {r['depth']}: resdepth {r['resdepth_images_per_second']:,.0f} img/s, naive "
              f"{r['naive_images_per_second'] or 0:,.0f} img/s, ratio {r['speedup'] or 0:.2f}x, "
              f"{r['achieved_gflops']:,.0f} GFLOP/s = {r['peak_fraction']*100:.0f}% of a {r['matmul_gflops']:,.0f} GFLOP/s "
              f"{r['precision']} matmul, peak {r['resdepth_peak_memory_mb']:,.0f} MB vs {r['naive_peak_memory_mb'] or 0:,.0f} MB")
concurrent = load("concurrent.json")
if concurrent:
    for r in concurrent["rows"]:
        print(f"{r['jobs']} job(s)/GPU depth {r['depth']}: {r['aggregate_images_per_second']:,.0f} img/s aggregate")
    for e in concurrent["figure6_extrapolation"]:
        print(f"EXTRAPOLATION (from the rows above, training steps only): Figure 6 sweep at {e['jobs_per_gpu']} "
              f"job(s)/GPU = {e['figure6_hours_extrapolated']:.2f} h")
for name in ("fused.json", "fused-bf16.json"):
    fused = load(name)
    rows = (fused or {}).get("fused_rows", [])
    for r in rows:
        print(f"fused {r['precision']} depth {r['depth']} K={r['models']}: {r['fused_images_per_second']:,.0f} img/s "
              f"aggregate vs one run {r['sequence_images_per_second']:,.0f} ({r['fused_vs_sequence']:.2f}x), "
              f"peak {r['fused_peak_memory_mb']:,.0f} MB vs {r['single_peak_memory_mb']:,.0f} MB")
    for depth in sorted({r["depth"] for r in rows}):  # K = 1 means separate runs: one run's rate
        mine = [r for r in rows if r["depth"] == depth]
        rates = {1: sorted(r["sequence_images_per_second"] for r in mine)[len(mine) // 2],
                 **{r["models"]: r["fused_images_per_second"] for r in mine if r["models"] > 1}}
        best = max(rates, key=rates.get)
        print(f"best K at depth {depth} ({mine[0]['precision']}): {best}, {rates[best]:,.0f} img/s vs "
              f"{rates[1]:,.0f} unfused (for MEASURED_BEST_FUSE['cuda'] in resdepth/fused.py)")
    if rows:
        sizes = {r["models"] for r in rows}
        for k in sorted({s for s in sizes if s < 5} | ({5} if max(sizes) >= 5 else set())):
            jobs = [k] * (5 // k) + ([5 % k] if 5 % k else [])
            hours = sum(iterations * step_seconds(rows, depth, size)
                        for depth in (20, 32, 44, 56, 110) for size in jobs) / 3600
            print(f"EXTRAPOLATION ({rows[0]['precision']}, training steps only, one GPU): Table 6 sweep, 5 seeds x "
                  f"20/32/44/56/110, {iterations} iterations, --fuse {k} (jobs of {jobs}) = {hours:.2f} h"
                  + ("  (a job of 5 costed at the next measured K)" if 5 in jobs and 5 not in {r['models'] for r in rows}
                     else ""))
try:
    import pandas as pd
    m = pd.read_csv(out / "metrics.csv")
    last = m.iloc[-1]
    seconds = m["epoch_seconds"].sum()
    pace = last["iteration"] / seconds
    print(f"ResNet-20 run: {int(last['iteration'])} of {iterations} iterations in {seconds:.0f} s of training epochs "
          f"({m['images_per_second'].iloc[1:].median() if len(m) > 1 else last['images_per_second']:,.0f} img/s median epoch), "
          f"test error {last['test_error']:.2f}% at epoch {int(last['epoch'])}")
    if last["iteration"] < iterations:
        print(f"EXTRAPOLATION: the whole run would take {iterations / pace / 60:.1f} min of training epochs at this pace")
except Exception as exc:  # no run, or no finished epoch
    print(f"64k run: no metrics ({type(exc).__name__})")
EOF
cat "$OUT/summary.txt"
