#!/usr/bin/env bash
# Every CUDA check of realm_ros in one bounded run: the CUDA unit tests (CPU/GPU agreement, bf16 autocast, the
# Triton matcher, the pipeline and trainer on the GPU) and the three CUDA benchmarks of benchmarks/RESULTS.md
# (voxel grid incl. the host-to-device copy, REALM encoder fp32/bf16/compiled, reciprocal matching at 448 x 448).
#
# Needs a machine with an NVIDIA GPU and a CUDA build of PyTorch plus numba, peft, opencv, safetensors, pytest
# (a CUDA image that has those, or this package's .venv with a CUDA torch). The ROS-free core is all it runs:
# no rclpy needed. Pure-Python packages a bare image lacks (rosbags and its wheels) can be carried in .whl/:
#
#   bash benchmarks/gpu_check.sh --fetch-wheels     # here, with network: cp312 wheels into .whl/ (git-ignored)
#   bash benchmarks/gpu_check.sh [OUT_DIR]          # there: logs and JSON into OUT_DIR (default $OUT or gpu_check_out)
#   STEPS="bench_pipeline_full bench_pipeline_shipped" bash benchmarks/gpu_check.sh   # only these steps
#
# Budget: about 8-10 minutes on an H100 (each step has its own timeout, so one hang cannot eat the others' time);
# where one command may run at most 10 minutes, run it in two parts with STEPS (e.g. the tests and the first three
# benchmarks, then bench_pose_step and the two whole-pipeline runs). The whole-pipeline runs (bench_pipeline.py, no
# ROS needed) measure the GPU target "full pipeline >= 60 Hz": full-size random-weight models at 448 fed with
# simulated packets at 4x real time (windows offered faster than they can be processed), and the shipped miniature
# models.
set -u
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--fetch-wheels" ]; then
    PYVER=${PYVER:-3.12}
    mkdir -p .whl
    python3 -m pip download --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl rosbags==0.11.9 rosbags-image==0.10.4 apsw backports.zstd lz4 ruamel.yaml
    exit $?
fi

OUT_DIR=${1:-${OUT:-gpu_check_out}}
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python3}
SUMMARY="$OUT_DIR/summary.txt"
: > "$SUMMARY"
if ls .whl/*.whl > /dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/realm_site \
        .whl/*.whl && export PYTHONPATH=/tmp/realm_site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 NUMBA_CACHE_DIR=/tmp/realm_numba_cache

step() {   # step NAME TIMEOUT_S COMMAND...: run, keep the log, record the exit status in the summary
    local name=$1 limit=$2
    shift 2
    if [ -n "${STEPS:-}" ] && [ "$name" != device ] && [[ " $STEPS " != *" $name "* ]]; then
        return 0
    fi
    local t0=$SECONDS
    echo "== $name: $*" | tee -a "$SUMMARY"
    timeout "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$OUT_DIR/$name.log"
    echo "== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$SUMMARY"
}

step device 60 "$PY" -c "import torch, platform; print(platform.node(), torch.__version__, torch.version.cuda, \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NO CUDA DEVICE')"
cat "$OUT_DIR/device.log" >> "$SUMMARY"
step cuda_tests 240 "$PY" -m pytest -q -rs -p no:cacheprovider -k cuda \
    test/unit/test_events_voxel.py test/unit/test_models_dune.py test/unit/test_models_realm.py \
    test/unit/test_matching_reciprocal_nn.py test/unit/test_matching_mast3r.py test/unit/test_pipeline_core.py \
    test/unit/test_training_trainer.py test/unit/test_pipeline_dense.py test/unit/test_pipeline_runner.py \
    test/unit/test_miniature_shipped.py
step bench_events 150 "$PY" benchmarks/bench_events.py --cuda --repeat 10
step bench_models 180 "$PY" benchmarks/bench_models.py --device cuda --compile --json "$OUT_DIR/bench_models.json"
step bench_matching 120 "$PY" benchmarks/bench_matching.py --sizes 448 --repeats 3 --cuda-only
step bench_pose_step 240 "$PY" benchmarks/bench_pose_step.py --only-compute --device cuda \
    --compute-variants fp32:sqpnp fp32:essential bf16-heads:essential bf16:essential --repeats 2
step bench_pipeline_full 240 "$PY" benchmarks/bench_pipeline.py --models full --device cuda --rate 4 \
    --sim-seconds 2 --warmup 10 --seconds 15 --json "$OUT_DIR/bench_pipeline_full.json"
step bench_pipeline_shipped 150 "$PY" benchmarks/bench_pipeline.py --device cuda --rate 4 --sim-seconds 3 \
    --warmup 5 --seconds 15 --json "$OUT_DIR/bench_pipeline_shipped.json"
grep -h -E "CUDA|cuda|speed-up|ratio|x[0-9]|dense outputs|pose steps|windows offered" "$OUT_DIR"/bench_*.log \
    >> "$SUMMARY" 2>/dev/null
echo "logs in $OUT_DIR"
