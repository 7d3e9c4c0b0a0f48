#!/usr/bin/env bash
# The checks and benchmarks that need a GPU, as one prepared run for a session lent a device machine
# (CI never has one). Run it there from the repository root; everything it prints is also written
# under OUT (default ./gpu_out): one log per step, so a step cut short at its time limit still
# leaves the others.
#
#     OUT=$OUT bash scripts/gpu_checks.sh            # about 8-11 minutes on an H100/H200
#     OUT=/tmp/g bash scripts/gpu_checks.sh --quick  # tiny sizes: checks that every step runs (CPU too)
#     ONLY="cuda_tests bench_cntk" OUT=$OUT bash scripts/gpu_checks.sh   # only these steps (names below),
#                                                    # e.g. to split the run over two 10-minute calls
#
# Steps, in order of what the open issues still lack:
#   1. the CUDA tests (pytest -m cuda): kernels, nets, trainer and the structured NTK on the device
#      against the CPU;
#   2. the CNTK's per-entry time (scripts/bench_cntk.py; target on an H100/H200: global average pool
#      ≤ 1 ms per entry in float32) and kernel regression throughput (scripts/bench_regress.py);
#   3. the step loop (scripts/bench_train.py --tables step: ≤ 0.5 ms per step at width 1024, the
#      width-8192 step's share of the fp32 peak, eager and with compile=reduce-overhead, i.e. CUDA
#      graphs) and seeds at once (--tables seeds: 8 seeds at width 256 in ≤ 2× one seed's time);
#   4. the tracked quantities' cost at width 1024 and 4096 (--tables run);
#   5. (only where data/mnist and data/fashion_mnist hold the files) the CNTK-GAP regression rows the
#      CPU could not reach: n = 1000 and 3000 balanced train images, 1000 test images, float32
#      kernels, MNIST and Fashion-MNIST (`regress -m +sweep=cntk`, GAP readout). The runs go to
#      /tmp/ntklab_regress (their kernel blocks are hundreds of MB) and only their regression.json
#      and config come back under OUT/cntk_regress/. To have the data there, before the device call:
#          mkdir -p data/mnist data/fashion_mnist && cp .../mnist.pkl.gz data/mnist/ &&
#          cp .../fashion-mnist/*-ubyte.gz data/fashion_mnist/ && echo /data/ >> .git/info/exclude  (/data/: not docs/data)
#      and add "data" to the call's carry (47 MB with the wheels below).
#
# The device image has torch, numpy, scipy, pandas, pyarrow, matplotlib, tqdm and pytest but not Hydra:
# carry its pure-Python wheels (made here: `pip wheel --no-deps -w .whl hydra-core==1.3.8 omegaconf==2.3.0
# antlr4-python3-runtime==4.9.3 submitit hydra-submitit-launcher`, with `.whl/` in .git/info/exclude) and
# start the device command with
#     python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
#     python3 -m pip install -q --no-index --no-deps --no-build-isolation -e .
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
QUICK=${1:-}
export PYTHONUNBUFFERED=1

ONLY=${ONLY:-}

cntk_regress() {    # cntk_regress N_TRAIN_LIST [EXTRA...]: the GAP rows of both data sets, results to $OUT
    local sizes=$1
    shift
    for set in mnist fashion_mnist; do
        if [ ! -d "data/$set" ]; then
            echo "no data/$set: skipped (see the header)"
            continue
        fi
        python -m ntklab regress -m +sweep=cntk data=$set data.root=data/$set data.n_train=$sizes \
            model.readout=gap dtype=float32 progress=false hydra.sweep.dir=/tmp/ntklab_regress/$set "$@"
        mkdir -p "$OUT/cntk_regress/$set"
        (cd /tmp/ntklab_regress/$set && find . \( -name regression.json -o -name config.yaml \) \
            -exec cp --parents {} "$OUT/cntk_regress/$set/" \;)
    done
}

step() {        # step NAME COMMAND...: run it, keep its output in $OUT/NAME.log, go on whatever happens
    local name=$1
    shift
    if [ -n "$ONLY" ] && [[ " $ONLY " != *" $name "* ]]; then
        return 0
    fi
    echo "== $name: $*" | tee "$OUT/$name.log"
    local start=$SECONDS
    "$@" 2>&1 | tee -a "$OUT/$name.log"
    echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s" | tee -a "$OUT/$name.log"
}

python -c "import torch; print(torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(0))" \
    | tee "$OUT/device.log"
if [ "$QUICK" = "--quick" ]; then
    step cuda_tests python -m pytest -m cuda -q
    step bench_cntk python scripts/bench_cntk.py --depth 3 --size 8 --n-gap 2 --n-flatten 4 --digits-n 16 \
        --empirical-n 4 --repeats 1
    step bench_regress python scripts/bench_regress.py --quick
    step bench_train python scripts/bench_train.py --tables step seeds --step-steps 10 --steps 10 --seeds 2 \
        --seeds-width 16 --seeds-plots false
    step cntk_regress cntk_regress 20 data.n_test=20
    exit 0
fi
step cuda_tests python -m pytest -m cuda -q
step bench_cntk python scripts/bench_cntk.py --dtypes float32 float64 --n-gap 8 --n-flatten 128
step bench_regress python scripts/bench_regress.py
step bench_train_step python scripts/bench_train.py --tables step seeds --seeds-plots false
step bench_train_run python scripts/bench_train.py --tables run --widths 1024 4096 --steps 1000
step cntk_regress cntk_regress 1000,3000
