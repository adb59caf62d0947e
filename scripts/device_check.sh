#!/usr/bin/env bash
# The device check: one prepared run on a lent GPU machine (see docs/benchmarks.md, "GPU (device check)").
#
#   scripts/device_check.sh                 on the GPU machine: the GPU tests, the benchmark, the demo on cuda
#   scripts/device_check.sh --dry-run       the same steps on the CPU, small (CI runs it; figures mean nothing)
#   scripts/device_check.sh --fetch-wheels  HERE, before a device call: the small wheels the machine lacks -> .whl/
#
# Every figure goes to $OUT (default runs/device_check): device_check.json (all of them: the environment, the
# tests' outcomes, the benchmark's and the demo's records, and the headline: train-step images/s at batch 64 in
# bf16, the fraction of the bf16 peak, the loader's wait fraction), device_check.md, device_check.log and
# bench.json (4 files: at most 8 come back from the machine, and GPU tests may add their own).
#
# The machine (one H200, Python 3.12, torch with CUDA, no network) lacks some of the project's packages. The small
# ones travel as wheels in .whl/ (--fetch-wheels; name .whl in the call's carry) and are installed to /tmp: pydantic
# (the configs) and lmdb (the loader benchmark). rasterio (35 MB) does not fit with the tree under the 64 MiB a call
# carries, so what reads or writes GeoTIFFs runs without it: the GPU test of predict_map is skipped, the loader
# benchmark leaves the GeoTIFF source out, and the demo trains on the embedded BigEarthNet npz patches instead of
# EuroSAT. The summary lists what was missing.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DRY=0
FETCH=0
for arg in "$@"; do
  case $arg in
    --dry-run) DRY=1 ;;
    --fetch-wheels) FETCH=1 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg (see --help)" >&2; exit 2 ;;
  esac
done

if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

# the small wheels the device machine lacks (pinned to what the project runs here; cp312, manylinux x86-64)
WHEELS="pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 lmdb==3.0.0"
if [ $FETCH = 1 ]; then
  mkdir -p .whl .git/info
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  $PYTHON -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl $WHEELS || exit 1
  du -ch .whl/*.whl | tail -1
  echo "now call the device tool: run with carry [\".whl\"] and command 'bash scripts/device_check.sh'"
  exit 0
fi

OUT=${OUT:-$ROOT/runs/device_check}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
exec > >(tee -a "$OUT/device_check.log") 2>&1
export PYTHONUNBUFFERED=1
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
PARTS=$WORK/parts  # the steps' own records (env.json, gpu_tests.xml, demo.json): all in device_check.json
mkdir -p "$PARTS"

if [ $DRY = 0 ] && compgen -G ".whl/*.whl" >/dev/null; then
  echo "== installing the carried wheels to $WORK/site"
  $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" .whl/*.whl \
    && export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # the package from the tree, installed or not

if [ $DRY = 1 ]; then DEVICE=cpu; else DEVICE=cuda; fi
echo "== environment (device $DEVICE, dry run $DRY)"
DRY=$DRY $PYTHON - "$PARTS/env.json" <<'PY' || exit 2
import importlib.util, json, os, platform, sys, time
import torch
dry = os.environ["DRY"] == "1"
cuda = torch.cuda.is_available()
wanted = ["pydantic", "rasterio", "lmdb", "dask", "pystac", "rioxarray", "h5netcdf", "papermill"]
try:
    from atomizer.core.runtime import git_commit
    commit = git_commit()
except Exception as e:  # the package itself does not import: reported, then the steps fail
    commit = f"atomizer does not import: {e}"
env = {
    "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    "dry_run": dry,
    "python": platform.python_version(),
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "cuda_available": cuda,
    "device_name": torch.cuda.get_device_name(0) if cuda else None,
    "device_count": torch.cuda.device_count() if cuda else 0,
    "cpu_count": os.cpu_count(),
    "missing": [m for m in wanted if importlib.util.find_spec(m) is None],
    "commit": commit,
}
json.dump(env, open(sys.argv[1], "w"), indent=2)
print(json.dumps(env, indent=2))
if not dry and not cuda:
    sys.exit("no CUDA device: run with --dry-run off a GPU machine")
PY

echo "== GPU tests (pytest -m gpu)"
if [ $DRY = 1 ]; then
  # on the CPU: the same tests, less the map of a trained run (it trains one first) and the fused-attention
  # timings of test_models_gpu.py (a GPU measurement: minutes on a CPU, and meaningless there)
  ATOMIZER_GPU_TESTS_DEVICE=cpu $PYTHON -m pytest tests/gpu -m gpu -q -p no:cacheprovider -rs \
    --ignore=tests/gpu/test_models_gpu.py -k "not predict_map" --junitxml="$PARTS/gpu_tests.xml"
else
  $PYTHON -m pytest tests/gpu -m gpu -q -p no:cacheprovider -rs --durations=10 --junitxml="$PARTS/gpu_tests.xml"
fi
RC_TESTS=$?

echo "== benchmark (atomizer bench --device $DEVICE)"
if [ $DRY = 1 ]; then
  ATOMIZER_BENCH_SMOKE=1 $PYTHON -m atomizer bench --quick --device cpu --case encoder_train_step --case loader \
    --json "$OUT/bench.json"
else
  $PYTHON -m atomizer bench --device cuda --precision bf16 --batch 64 \
    --case encoder_train_step --case reference_train_step --case loader --case dense_decoder --json "$OUT/bench.json"
fi
RC_BENCH=$?

echo "== demo experiment on $DEVICE (experiments/embedded_demo.yaml's models, fold 0, one epoch)"
DRY=$DRY DEVICE=$DEVICE WORK=$WORK $PYTHON - "$PARTS/demo.json" <<'PY'
import json, os, sys
import yaml
from atomizer.bench import demo_train
params = yaml.safe_load(open("experiments/embedded_demo.yaml")).get("parameters", {})
recs = demo_train(params, os.environ["DEVICE"], os.path.join(os.environ["WORK"], "demo"), small=os.environ["DRY"] == "1")
json.dump(recs, open(sys.argv[1], "w"), indent=2)
for r in recs:
    print(r)
PY
RC_DEMO=$?

echo "== summary"
RC_TESTS=$RC_TESTS RC_BENCH=$RC_BENCH RC_DEMO=$RC_DEMO $PYTHON - "$OUT" "$PARTS" <<'PY'
import os, sys
from atomizer.bench import DEVICE_CHECK_FILES, device_summary
steps = {k: int(os.environ[f"RC_{k.upper()}"]) for k in ("tests", "bench", "demo")}
device_summary(sys.argv[1], sys.argv[2], steps={"gpu_tests": steps["tests"], "bench": steps["bench"], "demo": steps["demo"]})
print(open(os.path.join(sys.argv[1], DEVICE_CHECK_FILES["markdown"])).read())
PY
RC_SUMMARY=$?
echo "files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
if [ $RC_TESTS != 0 ] || [ $RC_BENCH != 0 ] || [ $RC_DEMO != 0 ] || [ $RC_SUMMARY != 0 ]; then
  echo "device check: some step failed (tests $RC_TESTS, bench $RC_BENCH, demo $RC_DEMO, summary $RC_SUMMARY)"
  exit 1
fi
echo "device check: every step ran"
