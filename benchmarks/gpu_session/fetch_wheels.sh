#!/usr/bin/env bash
# Run HERE (a machine with access to the package registries), from the repo root:
#     bash benchmarks/gpu_session/fetch_wheels.sh
# Downloads cp312 / manylinux x86_64 (or pure-python) wheels of exactly the runtime packages the
# GPU machine lacks, pinned to constraints.txt, into .whl/ (carried to the device with
# carry: [".whl"]), and keeps .whl/ out of git through .git/info/exclude.
# The device (Python 3.12, torch CUDA, numpy, pandas, pyarrow, numba, seaborn, tqdm, pyyaml,
# pytest, hypothesis, transformers) lacks: simpy (sim/), hydra-core + omegaconf +
# antlr4-python3-runtime (hw/calibrate/cli.py, hw/validate/cli.py, sim/cli.py, policies/config.py).
# hydra-core's other dependency, packaging, is there (pytest needs it); PyYAML too.
# Nothing else that `import moe_offload_lab.hw.cli, moe_offload_lab.sim.cli`, the stages of run.sh or tests/hw import is missing.
set -euo pipefail

PACKAGES=(simpy hydra-core omegaconf antlr4-python3-runtime)
DEST=.whl
PY=${PYTHON:-python3}
LIMIT_MIB=60

if [[ ! -f constraints.txt || ! -d hw || ! -d benchmarks/gpu_session ]]; then
    echo "fetch_wheels.sh: run it from the repo root (constraints.txt, hw/ not found)" >&2
    exit 2
fi

norm() { tr '[:upper:]_.' '[:lower:]--' <<<"$1"; }

pin() {  # the version constraints.txt pins for package $1
    local want line name
    want=$(norm "$1")
    while IFS= read -r line; do
        line=${line%%#*}
        [[ $line == *==* ]] || continue
        name=$(norm "${line%%==*}")
        name=${name// /}
        if [[ $name == "$want" ]]; then
            line=${line#*==}
            echo "${line//[[:space:]]/}"
            return 0
        fi
    done < constraints.txt
    echo "fetch_wheels.sh: $1 is not pinned in constraints.txt" >&2
    return 1
}

wheel_of() {  # the wheel in $DEST of package $1 version $2, if any
    local stem
    stem=$(norm "$1")
    stem=${stem//-/_}
    compgen -G "$DEST/${stem}-$2-*.whl" | head -n 1 || true
}

mkdir -p "$DEST"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

for pkg in "${PACKAGES[@]}"; do
    version=$(pin "$pkg")
    have=$(wheel_of "$pkg" "$version")
    if [[ -n $have ]]; then
        echo "have   $have"
        continue
    fi
    # stale versions of this package would be installed too: drop them
    stem=$(norm "$pkg"); stem=${stem//-/_}
    rm -f "$DEST/${stem}"-*.whl
    if "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
            --implementation cp --platform manylinux_2_28_x86_64 \
            --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            -d "$DEST" "$pkg==$version"; then
        echo "wheel  $(wheel_of "$pkg" "$version")"
        continue
    fi
    # no wheel on the index (antlr4-python3-runtime 4.9.3 is an sdist only): build a pure-python
    # wheel from the sdist here; anything with compiled code has to come as a wheel instead
    echo "no wheel of $pkg==$version on the index: building one from the sdist"
    "$PY" -m pip download -q --no-deps --no-binary=:all: -d "$TMP/sdist" "$pkg==$version"
    "$PY" -m pip wheel -q --no-deps -w "$TMP/built" "$TMP"/sdist/*
    built=$(compgen -G "$TMP/built/*.whl" | head -n 1)
    case "$built" in
        *-py3-none-any.whl | *-py2.py3-none-any.whl) mv "$built" "$DEST/" ;;
        *) echo "fetch_wheels.sh: $built is not pure python: cannot carry it" >&2; exit 1 ;;
    esac
    rm -rf "$TMP/sdist" "$TMP/built"
    echo "built  $(wheel_of "$pkg" "$version")"
done

# every wheel must install on CPython 3.12 / manylinux x86_64
for whl in "$DEST"/*.whl; do
    case "$(basename "$whl")" in
        *-py3-none-any.whl | *-py2.py3-none-any.whl | *-cp312-cp312-manylinux*x86_64*.whl \
            | *-cp3*-abi3-manylinux*x86_64*.whl) ;;
        *) echo "fetch_wheels.sh: $whl does not fit cp312 manylinux x86_64" >&2; exit 1 ;;
    esac
done

total=$(du -cb "$DEST"/*.whl | tail -n 1 | cut -f1)
if (( total > LIMIT_MIB * 1024 * 1024 )); then
    echo "fetch_wheels.sh: $DEST holds $total bytes, over ${LIMIT_MIB} MiB" >&2
    exit 1
fi

# keep the wheels out of git (the device run carries ignored paths named in carry)
if [[ -d .git ]]; then
    mkdir -p .git/info
    touch .git/info/exclude
    grep -qxF '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
fi

ls -l "$DEST"
echo "total $(( total / 1024 )) KiB in $DEST (limit ${LIMIT_MIB} MiB)"
