#!/usr/bin/env bash
# The checks and benchmarks that need a GPU, as one prepared run for a session lent a device machine
# (CI never has one). Run it there from the repository root. Every step's output goes to one log per
# step under a work folder, and after each step OUT (default ./gpu_out) gets two files, remade each
# time: gpu_checks.log (all logs, in order) and gpu_checks.tgz (the logs and the regression runs'
# regression.json, config and predictions.pt). So a run cut short at its limit still leaves every
# finished step, and a device tool that brings back only a few files brings back everything.
#
#     OUT=$OUT DEADLINE=530 bash scripts/gpu_checks.sh    # every step ends within 530 s of the start
#     OUT=/tmp/g bash scripts/gpu_checks.sh --quick       # tiny sizes: checks that every step runs (CPU too)
#     ONLY="cuda_tests bench_cntk" OUT=$OUT bash scripts/gpu_checks.sh   # only these steps (names below)
#     ONLY=regress_mnist REGRESS_N=60000 REGRESS_LIMIT=560 OUT=$OUT bash scripts/gpu_checks.sh
#                       # the full MNIST; a second such call on the still-warm machine resumes its blocks
#
# Each step has its own time limit (below); with DEADLINE a step gets at most the seconds left before
# it, and one with under 20 s left is skipped. Steps, in order of what the open issues still lack:
#   cuda_tests        the CUDA tests (pytest -m cuda): kernels, nets, trainer and the structured NTK on
#                     the device against the CPU;
#   regress_gap_mnist, regress_gap_fashion_mnist
#                     (only where data/ holds the files, as below) kernel regression with the depth-2
#                     global-average-pool CNTK (CNTK-GAP) on GAP_N class-balanced train images
#                     (default 3000: 5.1 million entries, about 7 hours of two CPU cores at the
#                     9-10 ms per entry per worker that filled MNIST's on a 2-core AMD EPYC) and the 200
#                     balanced test images of the README's CPU rows, float32, each step within
#                     GAP_LIMIT seconds (default 200; a later call with ONLY=... resumes its blocks);
#   bench_regress, bench_regress_cpu_blocks
#                     kernel-regression throughput and solve time against n (scripts/bench_regress.py)
#                     with the GPU's block_elements, then the kernel table again with the CPU's 2^20;
#   regress_mnist, regress_fashion_mnist
#                     (only where data/mnist and data/fashion_mnist hold the files) kernel regression
#                     with the depth-2 flatten CNTK (CNTK-V) on REGRESS_N train images (default 10000)
#                     and REGRESS_N_TEST test images (default: as many, at most the 10000 both sets
#                     have), float32 kernels. The draws are not class-balanced (data.balanced=false: a
#                     seeded random subset), because MNIST's splits are not: a balanced 10000 of its
#                     test split or 60000 of its train split does not exist. So REGRESS_N=60000 is the
#                     whole training set against the whole test set, as in the published results.
#                     Above 20,000 train points regress solves by a Cholesky factorisation (solver=auto:
#                     an eigendecomposition of a 60,000² float64 kernel needs ~170 GB and many minutes),
#                     which needs a ridge above the float32 entries' rounding, so those runs choose one
#                     of REGRESS_RIDGES (default [1e-3,1e-2,1e-1]) on a held-out fifth. The
#                     runs go to /tmp/ntklab_regress (their kernel blocks are gigabytes); their
#                     regression.json, config and predictions.pt go into gpu_checks.tgz. To have the
#                     data there, before
#                     the device call:
#          mkdir -p data/mnist data/fashion_mnist && cp .../mnist.pkl.gz data/mnist/ &&
#          cp .../fashion-mnist/*-ubyte.gz data/fashion_mnist/ && echo /data/ >> .git/info/exclude  (/data/: not docs/data)
#                     and add "data" to the call's carry (47 MB with the wheels below).
#   bench_cntk        the CNTK's per-entry time (scripts/bench_cntk.py; target on an H100/H200: global
#                     average pool <= 1 ms per entry in float32);
#   bench_train_step  the step loop (scripts/bench_train.py --tables step: <= 0.5 ms per step at width
#                     1024, the width-8192 step's share of the fp32 peak, eager and with
#                     compile=reduce-overhead, i.e. CUDA graphs) and seeds at once (--tables seeds: 8
#                     seeds at width 256 in <= 2x one seed's time);
#   param_sweep       `python -m ntklab train -m +sweep=param device=cuda` (48 runs, 3 seeds at once
#                     per job): its wall time;
#
# The device image has torch, numpy, scipy, pandas, pyarrow, matplotlib, tqdm and pytest but not Hydra:
# carry its pure-Python wheels (made here: `pip wheel --no-deps -w .whl hydra-core==1.3.2 omegaconf==2.3.0
# antlr4-python3-runtime==4.9.3 submitit hydra-submitit-launcher`, with `.whl/` in .git/info/exclude) and
# start the device command with
#     mkdir -p /tmp/bin && printf '#!/bin/sh\nexec python3 "$@"\n' > /tmp/bin/python && chmod +x /tmp/bin/python
#     export PATH=/tmp/bin:$PATH
#     python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
#     python3 -m pip install -q --no-index --no-deps --no-build-isolation -e .
# (the image's python3 is a virtual environment's and there is no `python`; a symbolic link named
# python to it starts Python outside the environment, without torch, so the wrapper execs python3),
# and end it with `OUT=$OUT DEADLINE=530 bash scripts/gpu_checks.sh` under a call limit of 600 s.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
QUICK=${1:-}
ONLY=${ONLY:-}
DEADLINE=${DEADLINE:-0}
REGRESS_N=${REGRESS_N:-10000}
REGRESS_LIMIT=${REGRESS_LIMIT:-150}    # seconds for each regress step
REGRESS_N_TEST=${REGRESS_N_TEST:-$((REGRESS_N < 10000 ? REGRESS_N : 10000))}
GAP_N=${GAP_N:-3000}
GAP_LIMIT=${GAP_LIMIT:-200}    # seconds for each GAP regress step
WORK=$(mktemp -d /tmp/gpu_checks.XXXXXX)
RUNS=/tmp/ntklab_regress
# the regress steps' data, model and kernel settings (unbalanced draws, depth-2 CNTK-V, float32 kernels)
REGRESS_ARGS=(data.balanced=false depth=2 model.readout=flatten dtype=float32 block_size=2048 progress=false)
REGRESS_RIDGES=${REGRESS_RIDGES:-[1e-3,1e-2,1e-1]}
[ "$REGRESS_N" -gt 20000 ] && REGRESS_ARGS+=("ridges=$REGRESS_RIDGES")
# the GAP steps': balanced draws (the README's CPU rows at n = 100, 300, 1000 test on the same 200 images)
GAP_ARGS=(data.n_test=200 depth=2 model.readout=gap dtype=float32 block_size=256 progress=false)
export PYTHONUNBUFFERED=1

pack() {        # remake OUT's two files from what WORK and RUNS hold now (each written aside, then moved in)
    cat "$WORK"/*.log > "$WORK/all.txt" 2>/dev/null && mv -f "$WORK/all.txt" "$OUT/gpu_checks.log"
    local runs=()
    if [ -d "$RUNS" ]; then
        mapfile -t runs < <(cd "$RUNS" && find . -name regression.json -o -name config.yaml -o -name predictions.pt)
    fi
    local logs=("$WORK"/*.log)
    tar czf "$WORK/pack.tgz" -C "$WORK" "${logs[@]#$WORK/}" ${runs[@]+-C "$RUNS" "${runs[@]}"} \
        && mv -f "$WORK/pack.tgz" "$OUT/gpu_checks.tgz"
}

step() {        # step NAME SECONDS COMMAND...: run it within its limit, log it, pack, go on whatever happens
    local name=$1 limit=$2
    shift 2
    if [ -n "$ONLY" ] && [[ " $ONLY " != *" $name "* ]]; then
        return 0
    fi
    STEP=$((STEP + 1))
    local log="$WORK/$(printf %02d $STEP)_$name.log"
    if [ "$DEADLINE" -gt 0 ]; then
        local left=$((DEADLINE - SECONDS))
        if [ "$left" -lt 20 ]; then
            echo "== $name: skipped, $left s left before the deadline" | tee "$log"
            pack
            return 0
        fi
        [ "$left" -lt "$limit" ] && limit=$left
    fi
    echo "== $name (limit $limit s): $*" > "$log"
    local start=$SECONDS
    # Its own session, and its output into a file, not a pipe: at the limit timeout signals the
    # step's process group, and whatever outlives that (a compile worker that ignores SIGTERM, say)
    # is killed with the session below; no pipe is left held open by it to stall this script.
    setsid timeout -k 10 "$limit" "$@" >> "$log" 2>&1 < /dev/null &
    local pid=$!    # setsid does not fork here (a background job is no group leader): pid is the session id
    wait "$pid"
    local status=$?
    pkill -KILL -s "$pid" 2>/dev/null
    [ "$status" = 124 ] && echo "== $name: stopped at its limit of $limit s" >> "$log"
    echo "== $name: exit $status after $((SECONDS - start)) s" >> "$log"
    cat "$log"
    pack
}

STEP=0
step device 30 bash -c 'python -c "import torch; print(torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(0))"; nvidia-smi || true'
if [ "$QUICK" = "--quick" ]; then
    step cuda_tests 300 python -m pytest -m cuda -q
    step bench_cntk 120 python scripts/bench_cntk.py --depth 3 --size 8 --n-gap 2 --n-flatten 4 --digits-n 16 \
        --empirical-n 4 --repeats 1
    step bench_train_step 120 python scripts/bench_train.py --tables step seeds --step-steps 10 --steps 10 \
        --seeds 2 --seeds-width 16 --seeds-plots false
    step bench_regress 120 python scripts/bench_regress.py --quick
    for set in mnist fashion_mnist; do
        [ -d "data/$set" ] && step regress_gap_$set 120 python -m ntklab regress data=$set data.root=data/$set \
            data.n_train=10 "${GAP_ARGS[@]}" data.n_test=10 hydra.run.dir=$RUNS/gap_${set}_10
        [ -d "data/$set" ] && step regress_$set 120 python -m ntklab regress data=$set data.root=data/$set \
            data.n_train=20 data.n_test=20 "${REGRESS_ARGS[@]}" hydra.run.dir=$RUNS/flatten_${set}_20
    done
    exit 0
fi
step cuda_tests 150 python -m pytest -m cuda -q
for set in mnist fashion_mnist; do
    [ -d "data/$set" ] && step regress_gap_$set "$GAP_LIMIT" python -m ntklab regress data=$set data.root=data/$set \
        data.n_train=$GAP_N "${GAP_ARGS[@]}" hydra.run.dir=$RUNS/gap_${set}_$GAP_N
done
step bench_regress 60 python scripts/bench_regress.py
step bench_regress_cpu_blocks 40 python scripts/bench_regress.py --block-elements 1048576 --n-solve 500
for set in mnist fashion_mnist; do
    [ -d "data/$set" ] && step regress_$set "$REGRESS_LIMIT" python -m ntklab regress data=$set data.root=data/$set \
        data.n_train=$REGRESS_N data.n_test=$REGRESS_N_TEST "${REGRESS_ARGS[@]}" hydra.run.dir=$RUNS/flatten_${set}_$REGRESS_N
done
step bench_cntk 90 python scripts/bench_cntk.py --dtypes float32 float64 --n-gap 8 --n-flatten 128
step bench_train_step 150 python scripts/bench_train.py --tables step seeds --seeds-plots false
step param_sweep 100 python -m ntklab train -m +sweep=param device=cuda hydra.sweep.dir=/tmp/param_sweep
