#!/usr/bin/env bash
# resdepth's GPU check: the GPU-only tests, then throughput, in one call of at most 7 minutes (BUDGET=420 s) on one
# H100 or H200: with the machine's start-up, about half of the 15 minutes of device time a session gets, so that a
# rerun (with a smaller BUDGET, or a few steps) still fits.
#
#   bash benchmarks/gpu_bench.sh                 # synthetic images of CIFAR-10's size (50k train, 10k test)
#   CIFAR_DIR=/path/to/cifar bash benchmarks/gpu_bench.sh   # CIFAR-10 (torchvision's cifar-10-batches-py) instead
#   bash benchmarks/gpu_bench.sh --rehearse     # the same steps and files on the CPU with tiny sizes (CI runs it:
#                                               # tests/test_gpu_bench.py), so a renamed option or helper fails there
#
# What the machine needs: a Python ($PY, default python3) with torch, pandas, pytest, typer, rich and matplotlib.
# resdepth runs from this checkout (PYTHONPATH, `python -m resdepth.cli`): nothing is installed, nothing downloaded.
# Without torchvision the bench step leaves out the naive recipe (--no-naive).
#
# Output: $OUT (the device tool's folder; else ./gpu-bench-out) receives three files, as a lent machine returns
# only a few: summary.txt (also printed), steps.txt (each step's exit and seconds, written as it goes) and
# gpu-bench.tar.gz (every log and JSON file, refreshed after each step, so a cut script still returns them).
# Steps, each in its own time box (cut at the time the whole script has left, BUDGET=420 s in all), in this order:
#   1. environment, and tests/test_gpu.py one test per process, each under `timeout` (no pytest plugin needed) of
#      at most 90 s: resume after SIGKILL, CUDA graph vs eager and resumed, the last visible GPU, bf16, 2 jobs per
#      GPU, memory released, fused seeds vs their own runs, --deterministic's same bits, a compiled run and its
#      resume, the compiled fused group (compiling: the last three, the slowest)                     <= 180 s
#      A rerun may pick tests: GPU_TESTS_K="fast_fused" (pytest -k), GPU_TESTS=0 for none.
#   2. resdepth bench: depths 20/56/110, resdepth vs the naive PIL + DataLoader recipe               <= 50 s
#   2b. the same with --cuda-graph (no naive recipe)                                                  <= 25 s
#   2c. the same at depth 20 with --compile (torch.compile's CUDA-graph mode, the SGD update compiled) <= 70 s
#   2d. the fast path at the FAST_DEPTHS (20/56/110/1202) that 2 and 2b left out, i.e. ResNet-1202, in windows
#       of 10 steps: the default (eager) step                                                        <= 35 s
#       and --cuda-graph (--compile only at depth 20, in 2c: compiling 1202 layers would take minutes) <= 35 s
#   2e. fused-fast: bench --fuse 8 --compile --no-processes, ResNet-20 then -56, vs one compiled run  <= 60 s
#       (the rehearsal compiles it too: K = 2 at depth 8)
#       The summary prints default vs fast vs fused-fast per depth, and each of issue #27's targets as MET, NOT
#       MET or NOT MEASURED, the Table 6 time (+ ResNet-1202 once) EXTRAPOLATED at each depth's quickest way (each
#       run's or job's steps, set-up and warm-up, and evaluations estimated).
#   3. 1, 2 and 4 concurrent jobs per GPU, aggregate img/s and the Figure 6 sweep time EXTRAPOLATED   <= 40 s
#   3b. --fuse: one fused job of K seeds vs one run, ResNet-20 and -56, K = 1..16, tf32                <= 40 s
#   3c. the same in bf16 (K = 1, 4, 16), and the Table 6 sweep time EXTRAPOLATED from 3b              <= 20 s
#   4. a 64k-iteration ResNet-20 run (`resdepth train`, the defaults; --cuda-graph or --compile if 2b or 2c was faster),
#      cut at the time left; a cut run reports how far it got and its pace                          the rest
# The boxes add up to more than the budget: a step that ends early leaves its time to the later ones, and the last
# steps are cut (or skipped) when the early ones take their whole boxes.
# bench and bench --fuse write their JSON row by row, so a step cut at its limit keeps the rows it measured.
set -u
REHEARSE=0
if [ "${1:-}" = "--rehearse" ]; then REHEARSE=1; fi
START=$(date +%s)
OUT=$(realpath -m "${OUT:-gpu-bench-out}")
cd "$(dirname "$0")/.." || exit 1  # the checkout's root: resdepth is imported from here
PY=${PY:-python3}
if [ "$REHEARSE" = 1 ]; then  # the CPU, tiny sizes, the same steps and files
  : "${DEVICE:=cpu}" "${DEPTHS:=8}" "${BENCH_ITERS:=1}" "${WARMUP:=1}" "${CONC_STEPS:=2}" "${WORKERS:=0}"
  : "${TRAIN_ITERS:=8}" "${SYNTH_TRAIN:=64}" "${SYNTH_TEST:=16}" "${FUSE_DEPTHS:=8}" "${FUSE_SIZES:=2}"
  : "${BF16_SIZES:=2}" "${FUSE_ITERS:=1}" "${GPU_TESTS:=1}" "${BUDGET:=210}" "${TRAIN_MIN:=5}" "${ROUNDS:=1}"
  : "${CONC_JOBS:=1}" "${BENCH_SYNTH:=64}" "${BATCH:=16}" "${FAST_DEPTHS:=8,14}" "${DEEP_ITERS:=1}" "${DEEP_WARMUP:=1}"
  : "${FUSED_FAST_DEPTHS:=8}" "${FUSED_FAST_K:=2}"
  # eager (the CPU's default for a paper-length run is torch.compile: minutes), one thread, a small matmul
  EAGER=(--no-compile) CPU=(--threads 1) MATMUL=(--matmul-size 128)
fi
BUDGET=${BUDGET:-420}  # seconds for the whole script, copying $OUT off the machine aside
DEVICE=${DEVICE:-cuda} DEPTHS=${DEPTHS:-20,56,110} WORKERS=${WORKERS:-8}  # 8 of the 16 cores load the naive recipe
BENCH_ITERS=${BENCH_ITERS:-100} WARMUP=${WARMUP:-20} CONC_STEPS=${CONC_STEPS:-100}
TRAIN_ITERS=${TRAIN_ITERS:-64000} SYNTH_TRAIN=${SYNTH_TRAIN:-50000} SYNTH_TEST=${SYNTH_TEST:-10000}
FUSE_DEPTHS=${FUSE_DEPTHS:-20,56} FUSE_SIZES=${FUSE_SIZES:-1,2,4,8,16} BF16_SIZES=${BF16_SIZES:-1,4,16}
FUSE_ITERS=${FUSE_ITERS:-30} GPU_TESTS=${GPU_TESTS:-99} TRAIN_MIN=${TRAIN_MIN:-30}
CONC_JOBS=${CONC_JOBS:-1,2,4} BENCH_SYNTH=${BENCH_SYNTH:-4096} BATCH=${BATCH:-128}  # bench's defaults, §4.2's batch
# the fast path's depths; those beyond DEPTHS (1202) get short windows: a ResNet-1202 step takes ~0.1 s, not ~2 ms
FAST_DEPTHS=${FAST_DEPTHS:-20,56,110,1202} DEEP_ITERS=${DEEP_ITERS:-10} DEEP_WARMUP=${DEEP_WARMUP:-3}
FUSED_FAST_DEPTHS=${FUSED_FAST_DEPTHS:-20,56} FUSED_FAST_K=${FUSED_FAST_K:-8}
[ -n "${EAGER+set}" ] || EAGER=()  # on a GPU a run trains eagerly by default
[ -n "${MATMUL+set}" ] || MATMUL=(--matmul-size 8192)  # bench's 2048 is too small to near an H100's matmul peak
[ -n "${CPU+set}" ] || CPU=()
ROUNDS=${ROUNDS:-2}
RESERVE=15  # seconds kept for the summary and the archive
mkdir -p "$OUT"
WORK=$(mktemp -d)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 COLUMNS=160
RESDEPTH=("$PY" -m resdepth.cli)
: > "$OUT/steps.txt"

left() { echo $((BUDGET - ($(date +%s) - START))); }
box() {  # a step's time limit: its own, or what the script has left before its reserve, whichever is less
  local room=$(($(left) - RESERVE))
  echo $(($1 < room ? $1 : room))
}
beyond_depths() {  # the FAST_DEPTHS that steps 2 and 2b do not measure, comma-separated
  local depth beyond=()
  for depth in ${FAST_DEPTHS//,/ }; do [[ ",$DEPTHS," == *",$depth,"* ]] || beyond+=("$depth"); done
  (IFS=,; echo "${beyond[*]}")
}
pack() {  # every file so far into the one archive, replaced whole
  tar -czf "$OUT/.gpu-bench.tar.gz.tmp" -C "$WORK" . && mv "$OUT/.gpu-bench.tar.gz.tmp" "$OUT/gpu-bench.tar.gz"
}
step() {  # step NAME LIMIT LOG COMMAND...: COMMAND in its time box, its output in LOG, its exit in steps.txt
  local name=$1 limit log=$3 began code
  limit=$(box "$2")
  shift 3
  if [ "$limit" -lt 5 ]; then
    echo "$name: skipped, no time left" | tee -a "$OUT/steps.txt" >> "$WORK/$log"
    return
  fi
  began=$(date +%s)
  timeout -k 5 "$limit" "$@" < /dev/null >> "$WORK/$log" 2>&1
  code=$?
  # 124: cut at its limit; 137: cut, and killed 5 s later for not ending on SIGTERM
  echo "$name: exit $code after $(($(date +%s) - began)) s (limit $limit s)$([[ $code = 124 || $code = 137 ]] && echo ', CUT')" \
    | tee -a "$WORK/$log" >> "$OUT/steps.txt"
  pack
}

if [ -n "${CIFAR_DIR:-}" ]; then
  BENCH_DATA=(--data-dir "$CIFAR_DIR")
  TRAIN_DATA=(--dataset cifar10 --data-dir "$CIFAR_DIR")
else
  BENCH_DATA=(--synthetic-train "$BENCH_SYNTH")
  TRAIN_DATA=(--dataset synthetic --synthetic-train "$SYNTH_TRAIN" --synthetic-test "$SYNTH_TEST")
fi
NAIVE=()
"$PY" -c "import torchvision" 2>/dev/null || NAIVE=(--no-naive)

# 1. environment, and the tests that need a GPU (they skip on CPU-only machines), one process and time box each
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  nproc; grep -m1 "model name" /proc/cpuinfo
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'gpus', torch.cuda.device_count())"
  "$PY" -c "import torchvision; print('torchvision', torchvision.__version__)" || echo "no torchvision: bench runs --no-naive"
  git rev-parse HEAD; git status --short | head -20; } > "$WORK/env.txt" 2>&1
pack
TESTS_END=$(($(date +%s) + $(box 180)))
# collected with the whole output kept: an import error in the test module (a package missing on the machine) is
# otherwise no test ids and no reason; 5 is pytest's "none collected" (GPU_TESTS_K matching nothing)
"$PY" -m pytest -o addopts= -q -p no:cacheprovider --collect-only -k "${GPU_TESTS_K:-}" tests/test_gpu.py \
  > "$WORK/gpu-collect.log" 2>&1
COLLECTED=$?
cat "$WORK/gpu-collect.log" >> "$WORK/gpu-tests.log"
echo "gpu tests collected: exit $COLLECTED (pytest --collect-only)" | tee -a "$WORK/gpu-tests.log" >> "$OUT/steps.txt"
grep "::" "$WORK/gpu-collect.log" | head -n "$GPU_TESTS" > "$WORK/gpu-tests.ids"
while read -r test; do
  step "$test" $((TESTS_END - $(date +%s) < 90 ? TESTS_END - $(date +%s) : 90)) gpu-tests.log \
    "$PY" -m pytest -o addopts= -q -p no:cacheprovider -rs "$test"
done < "$WORK/gpu-tests.ids"

# 2. resdepth vs the naive recipe, alternating in one process; 2b. the step captured as one CUDA graph
step bench 50 bench.log "${RESDEPTH[@]}" bench --device "$DEVICE" --depths "$DEPTHS" --iterations "$BENCH_ITERS" \
  --batch-size "$BATCH" --warmup "$WARMUP" --rounds "$ROUNDS" --num-workers "$WORKERS" "${NAIVE[@]}" "${EAGER[@]}" \
  "${MATMUL[@]}" "${BENCH_DATA[@]}" "${CPU[@]}" --json "$WORK/bench.json"
if [ "$DEVICE" = cpu ]; then
  echo "graph bench: not on the CPU (--cuda-graph records CUDA kernels)" | tee -a "$OUT/steps.txt" > "$WORK/graph.log"
else
  step "graph bench" 25 graph.log "${RESDEPTH[@]}" bench --device "$DEVICE" --depths "$DEPTHS" --iterations \
    "$BENCH_ITERS" --warmup "$WARMUP" --rounds "$ROUNDS" --batch-size "$BATCH" --no-naive --cuda-graph "${MATMUL[@]}" "${BENCH_DATA[@]}" --json "$WORK/graph.json"
fi
# 2c. the compiled step (its compilation is in the warm-up, not in the timed windows)
if [ "$DEVICE" = cpu ]; then
  echo "compile bench: not on the CPU (the rehearsal would compile for minutes)" | tee -a "$OUT/steps.txt" > "$WORK/compile.log"
else
  step "compile bench" 70 compile.log "${RESDEPTH[@]}" bench --device "$DEVICE" --depths 20 --iterations "$BENCH_ITERS" \
    --warmup "$WARMUP" --rounds "$ROUNDS" --batch-size "$BATCH" --no-naive --compile "${MATMUL[@]}" "${BENCH_DATA[@]}" --json "$WORK/compile.json"
fi

# 2d. the fast path at the depths 2 and 2b left out (1202): the default step, then the fast one; the compiled step
# stays at depth 20 (2c), as compiling a 1202-layer net would take the whole budget
DEEP=$(beyond_depths)
if [ -z "$DEEP" ]; then
  echo "deep bench: skipped, every FAST_DEPTHS depth is in DEPTHS" | tee -a "$OUT/steps.txt" > "$WORK/deep.log"
else
  step "deep bench" 35 deep.log "${RESDEPTH[@]}" bench --device "$DEVICE" --depths "$DEEP" --iterations "$DEEP_ITERS" \
    --warmup "$DEEP_WARMUP" --rounds "$ROUNDS" --batch-size "$BATCH" --no-naive "${EAGER[@]}" "${MATMUL[@]}" \
    "${BENCH_DATA[@]}" "${CPU[@]}" --json "$WORK/deep.json"
fi
if [ "$DEVICE" = cpu ]; then
  echo "deep graph bench: not on the CPU (--cuda-graph records CUDA kernels)" | tee -a "$OUT/steps.txt" > "$WORK/deep-graph.log"
elif [ -n "$DEEP" ]; then
  step "deep graph bench" 35 deep-graph.log "${RESDEPTH[@]}" bench --device "$DEVICE" --depths "$DEEP" --iterations \
    "$DEEP_ITERS" --warmup "$DEEP_WARMUP" --rounds "$ROUNDS" --batch-size "$BATCH" --no-naive --cuda-graph \
    "${MATMUL[@]}" "${BENCH_DATA[@]}" --json "$WORK/deep-graph.json"
fi
# 2e. fused-fast: one compiled job of K seeds against one compiled run (compilation in the warm-up)
# (the rehearsal compiles it too, at depth 8 and K = 2: tens of seconds on 2 cores)
step "fused-fast bench" 60 fused-fast.log "${RESDEPTH[@]}" bench --device "$DEVICE" --depths "$FUSED_FAST_DEPTHS" \
  --fuse "$FUSED_FAST_K" --compile --no-processes --iterations "$FUSE_ITERS" --warmup "$WARMUP" --rounds "$ROUNDS" \
  --batch-size "$BATCH" "${BENCH_DATA[@]}" "${CPU[@]}" --json "$WORK/fused-fast.json"

# 3. concurrent jobs per GPU, and the extrapolated Figure 6 sweep time (the script writes its rows as it goes)
step concurrent 40 concurrent.log "$PY" benchmarks/concurrent_throughput.py --device "$DEVICE" --jobs "$CONC_JOBS" \
  --depths "$DEPTHS" --steps "$CONC_STEPS" --warmup "$WARMUP" --batch-size "$BATCH" "${EAGER[@]}" --timeout 35 --out "$WORK/concurrent.json"

# 3b, 3c. fused seeds (--fuse): one job of K models against one run, alternating windows in one process
step "fused bench" 40 fused.log "${RESDEPTH[@]}" bench --device "$DEVICE" --depths "$FUSE_DEPTHS" --fuse \
  "$FUSE_SIZES" --no-processes --iterations "$FUSE_ITERS" --warmup "$WARMUP" --rounds "$ROUNDS" --batch-size "$BATCH" \
  "${BENCH_DATA[@]}" "${CPU[@]}" --json "$WORK/fused.json"
step "fused bf16 bench" 20 fused-bf16.log "${RESDEPTH[@]}" bench --device "$DEVICE" --depths "$FUSE_DEPTHS" \
  --fuse "$BF16_SIZES" --no-processes --precision bf16 --iterations "$FUSE_ITERS" --warmup "$WARMUP" --rounds "$ROUNDS" --batch-size "$BATCH" \
  "${BENCH_DATA[@]}" "${CPU[@]}" --json "$WORK/fused-bf16.json"

# 4. the full paper-length ResNet-20 run, in whatever time is left
GRAPH=$("$PY" benchmarks/gpu_bench_summary.py fastest-step "$WORK" 2>/dev/null)
TRAIN_SECONDS=$(($(left) - RESERVE))
if [ "$TRAIN_SECONDS" -ge "$TRAIN_MIN" ]; then
  echo "resdepth train ${GRAPH:-(eager step)}" > "$WORK/train.log"
  step train "$TRAIN_SECONDS" train.log "${RESDEPTH[@]}" train --depth 20 --kind residual --device "$DEVICE" \
    --iterations "$TRAIN_ITERS" --batch-size "$BATCH" "${TRAIN_DATA[@]}" "${CPU[@]}" $GRAPH --out "$WORK/run"
  cp "$WORK/run/residual-20-s0/metrics.csv" "$WORK/metrics.csv" 2>/dev/null
  rm -rf "$WORK/run"  # its checkpoint is not worth bringing back
else
  echo "train: skipped, $TRAIN_SECONDS s left" | tee -a "$OUT/steps.txt" > "$WORK/train.log"
fi

# 5. one summary: each step's exit, each GPU test's outcome, the measured rows and the (labelled) extrapolations
{ cat "$OUT/steps.txt"; echo; "$PY" benchmarks/gpu_bench_summary.py summary "$WORK" "$TRAIN_ITERS"; } \
  > "$OUT/summary.txt" 2>&1
cp "$OUT/summary.txt" "$WORK/summary.txt"
pack
rm -rf "$WORK"
cat "$OUT/summary.txt"
