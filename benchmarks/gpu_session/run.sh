#!/usr/bin/env bash
# One stage of the GPU session, run THERE (the device machine) from the repo root, one `run`
# call per stage (each at most 600 s), with the wheels of fetch_wheels.sh carried (carry: [".whl"]):
#     bash benchmarks/gpu_session/run.sh check       # GPU facts, the CUDA tests, bench_hw.py
#     bash benchmarks/gpu_session/run.sh calibrate   # a calibrated h100 profile into $OUT
#     bash benchmarks/gpu_session/run.sh validate    # simulator vs executor, Mixtral on 2 layers
# Each stage runs on its own: validate reads conf/hardware/$PROFILE_NAME.yaml (committed after
# calibrate) and falls back to a quick calibration of its own when that file is missing.
# Results go flat into $OUT (the run tool brings back at most 8 files of 16 MiB each).
#
# Environment (defaults in brackets):
#   OUT            where results go (set by the run tool; required)
#   RUN_DEVICE     cuda | cpu [cuda]; cpu runs the same commands on the CPU twin, small sizes
#   RUN_PYTHON     interpreter [python3]
#   RUN_SITE       where the carried wheels are installed [/tmp/site]
#   STAGE_BUDGET   seconds one stage may take before its last command is cut off [570]
#   PROFILE_NAME   calibrated profile name [h100-sxm-calibrated]; BASE_PROFILE [h100-sxm]
#   PROFILE        validate: a profile name or YAML path (overrides the lookup above)
#   REPEATS        validate: executor runs per cell, the median one counts [1]
#   TOKENS         validate: trace tokens per cell [256]
#   CAL_ARGS, VAL_ARGS   more Hydra overrides for calibrate / validate (space separated)
set -euo pipefail

STAGE=${1:-}
case "$STAGE" in
    check | calibrate | validate) ;;
    *) echo "usage: run.sh check|calibrate|validate" >&2; exit 2 ;;
esac
: "${OUT:?run.sh: OUT must name the output folder (the device run sets it)}"
if [[ ! -d hw || ! -d conf/hw ]]; then
    echo "run.sh: run it from the repo root" >&2
    exit 2
fi

DEVICE=${RUN_DEVICE:-cuda}
PY=${RUN_PYTHON:-python3}
SITE=${RUN_SITE:-/tmp/site}
STAGE_BUDGET=${STAGE_BUDGET:-570}
PROFILE_NAME=${PROFILE_NAME:-h100-sxm-calibrated}
BASE_PROFILE=${BASE_PROFILE:-h100-sxm}
REPEATS=${REPEATS:-1}
TOKENS=${TOKENS:-256}
read -r -a CAL_EXTRA <<<"${CAL_ARGS:-}"
read -r -a VAL_EXTRA <<<"${VAL_ARGS:-}"
START=$SECONDS
mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

if [[ $DEVICE == cpu ]]; then
    # the CPU twin: the same commands on a Mixtral with small experts (measured.model stays
    # mixtral-8x7b, so the calibrated profile applies to the validation as on the GPU)
    SHRINK=(+model_overrides.hidden_size=256 +model_overrides.expert_intermediate_size=512)
    CAL_SIZE=("${SHRINK[@]}" "sizes_mb=[0.25,1,4,16]" "tokens=[1,4,16,64]" "batches=[1,4,16]"
              "contexts=[64]" reference_context=64 repeats=3 warmup=1)
    VAL_SIZE=("${SHRINK[@]}" "policies=[lru,gate-lookahead]" "cache.fractions=[0.25,0.5]"
              "batches=[1,4]")
    TOKENS=${TOKENS_CPU:-48}
    BENCH_SIZE=(--tokens 48 --repeats 1)
else
    CAL_SIZE=()
    VAL_SIZE=()
    BENCH_SIZE=(--tokens 128)
fi

left() {  # seconds left of the stage budget (at least 10)
    local rest=$(( STAGE_BUDGET - (SECONDS - START) ))
    (( rest < 10 )) && rest=10
    echo "$rest"
}

step() {  # step NAME LOG CMD...: run CMD (cut off when the stage's time is up), its output
          # also into $OUT/LOG (- for none); a failure is recorded, the stage goes on
    local name=$1 log=$2 t0=$SECONDS rc=0
    shift 2
    local to=/dev/null
    [[ $log == - ]] || to=$OUT/$log
    echo "=== $name: $*"
    if declare -F "$1" > /dev/null; then  # a function of this script
        "$@" 2>&1 | tee "$to" || rc=$?
    else
        timeout --kill-after=10 "$(left)" "$@" 2>&1 | tee "$to" || rc=$?
    fi
    echo "=== $name: rc=$rc in $(( SECONDS - t0 )) s"
    (( rc == 0 )) || FAILED+=("$name(rc=$rc)")
    return 0
}

pack() {  # pack NAME DIR: DIR as $OUT/NAME.tar.gz (without timeline.json when over 15 MiB)
    local name=$1 dir=$2
    [[ -d $dir ]] || return 0
    tar -czf "$OUT/$name.tar.gz" -C "$dir" .
    if (( $(stat -c %s "$OUT/$name.tar.gz") > 15 * 1024 * 1024 )); then
        tar -czf "$OUT/$name.tar.gz" --exclude=timeline.json -C "$dir" .
    fi
}

install_wheels() {
    shopt -s nullglob
    local wheels=(.whl/*.whl)
    shopt -u nullglob
    if (( ${#wheels[@]} == 0 )); then
        echo "run.sh: no wheels in .whl/ (run fetch_wheels.sh here and carry .whl)" >&2
        return 1
    fi
    mkdir -p "$SITE"
    if "$PY" -m pip --version > /dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$SITE" "${wheels[@]}"
    else  # no pip: pure-python wheels are zip files of the installed tree
        for whl in "${wheels[@]}"; do "$PY" -m zipfile -e "$whl" "$SITE"; done
    fi
    echo "installed into $SITE: ${wheels[*]##*/}"
}

environment() {
    echo "stage $STAGE, device $DEVICE, $(date -u +%FT%TZ), $(nproc) CPUs"
    if command -v nvidia-smi > /dev/null; then
        nvidia-smi || true
        nvidia-smi --query-gpu=name,driver_version,memory.total,pcie.link.gen.current,pcie.link.gen.max,pcie.link.width.current,clocks.max.sm --format=csv || true
    else
        echo "nvidia-smi: not available"
    fi
    free -g || true
    "$PY" - <<'PYEOF'
import platform, sys
import torch
print("python", sys.version.split()[0], platform.platform())
print("torch", torch.__version__, "cuda", torch.version.cuda, "available",
      torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"{p.total_memory / 2**30:.1f} GiB", "sm", p.multi_processor_count,
          "cc", f"{p.major}.{p.minor}")
import moe_offload_lab.hw.cli, moe_offload_lab.sim.cli, moe_offload_lab.hw.validate.run, moe_offload_lab.hw.calibrate.run  # noqa: E401,F401  every stage's imports
import hydra, omegaconf, simpy
print("hydra", hydra.__version__, "omegaconf", omegaconf.__version__, "simpy", simpy.__version__)
PYEOF
}

stage_check() {
    step environment check-env.txt environment
    step pytest-cuda check-pytest-cuda.log "$PY" -m pytest -q -p no:cacheprovider -rs tests/hw \
        -k "gpu or cuda"
    step bench-hw check-bench.log "$PY" benchmarks/bench_hw.py --device "$DEVICE" \
        --out "$WORK/bench" "${BENCH_SIZE[@]}"
    pack check-bench "$WORK/bench"
    # the CPU tests last (they pass here; on the device they check its torch/transformers)
    step pytest-hw check-pytest-hw.log "$PY" -m pytest -q -p no:cacheprovider -rs tests/hw \
        -k "not gpu and not cuda"
}

stage_calibrate() {
    step environment calibrate-env.txt environment
    step calibrate calibrate-run.log "$PY" -m hw.cli calibrate device="$DEVICE" \
        base_profile="$BASE_PROFILE" name="$PROFILE_NAME" out="$OUT/$PROFILE_NAME.yaml" \
        "policies=[lru,lfu,fifo,gate-lookahead]" progress=false "${CAL_SIZE[@]}" \
        "${CAL_EXTRA[@]}"
}

stage_validate() {
    step environment validate-env.txt environment
    local profile=${PROFILE:-}
    if [[ -z $profile ]]; then
        if [[ -f conf/hardware/$PROFILE_NAME.yaml ]]; then
            profile=$PROFILE_NAME
        else
            echo "WARNING: conf/hardware/$PROFILE_NAME.yaml is missing (calibrate stage not" \
                 "committed?): validate calibrates quickly first (profile=null)"
            profile=null
        fi
    fi
    step validate validate-run.log "$PY" -m hw.cli validate profile="$profile" device="$DEVICE" \
        model=mixtral-8x7b layers=2 trace.tokens="$TOKENS" repeats="$REPEATS" warmup=true \
        progress=true out="$WORK/validate" "${VAL_SIZE[@]}" "${VAL_EXTRA[@]}"
    for f in validation.md validation.csv summary.json; do
        [[ -f $WORK/validate/$f ]] && cp "$WORK/validate/$f" "$OUT/validate-$f"
    done
    pack validate "$WORK/validate"
}

main() {
    FAILED=()
    step install - install_wheels
    export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    export PYTHONUNBUFFERED=1
    export TQDM_MININTERVAL=${TQDM_MININTERVAL:-5}
    "stage_$STAGE"
    echo "stage $STAGE done in $(( SECONDS - START )) s; files in $OUT:"
    ls -l "$OUT"
    if (( ${#FAILED[@]} )); then
        echo "FAILED: ${FAILED[*]}"
        return 1
    fi
    echo "all steps passed"
}

main 2>&1 | tee "$OUT/$STAGE.log"
