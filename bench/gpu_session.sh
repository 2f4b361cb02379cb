#!/usr/bin/env bash
# One GPU session (the device tool's H200): the training benchmark and the quality experiments.
# Expects, carried beside the repo: .gpu/site (pure-Python packages the GPU image lacks),
# .gpu/whl (compiled wheels for its Python), .gpu/slim (a data dir with food10 already ingested
# and a vocabulary built here: the SQLite database and the resized copies of labelled images).
# Writes everything to $OUT (the database with every run's epochs, a log, the results as JSON).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whl/*.whl || exit 1
export PYTHONPATH=$PWD:/tmp/site:$PWD/.gpu/site
DATA=/tmp/gpu-data; rm -rf $DATA; cp -r .gpu/slim $DATA
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, fastai, timm; print('torch', torch.__version__, 'fastai', fastai.__version__, 'timm', timm.__version__, torch.cuda.is_available())" || exit 1
RES=$OUT/results; mkdir -p $RES
q() { timeout "$1" python3 bench/quality.py --data-dir $DATA --vocab-version 1 --out $RES "${@:2}"; }
# 1. the study's schedule (15 frozen + 15 unfrozen epochs at 64 px); resnet18 has no offline
#    ImageNet weights on that machine, so its architecture trains from scratch: same work per step.
q 100 --seeds 0 --variant study-resnet18 '{"preset": "study", "pretrained": false}'
q 110 --seeds 0 --variant study-effnet '{"preset": "study", "arch": "efficientnet_lite0"}'
# 2. quality levers, one seed each, then the spread of the best candidates. Each run needs
#    ~10 s start-up, ~25 s lr_find and ~1.5-2 s an epoch there: keep the sum under 600 s.
q 75 --seeds 0 --variant default '{}'
q 75 --seeds 0 --variant s128-e6 '{"size": 128, "epochs": 6, "freeze_epochs": 2}'
q 75 --seeds 0 --variant s160-e6 '{"size": 160, "epochs": 6, "freeze_epochs": 2}'
q 75 --seeds 1 --variant s128-e6 '{"size": 128, "epochs": 6, "freeze_epochs": 2}'
cp $DATA/instatag.db $OUT/gpu.db
(cd $OUT && tar czf results.tgz results && rm -rf results)
