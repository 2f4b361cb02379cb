"""One training run timed from process start to the registered model, phase by phase, as JSON.

  T0=$(date +%s.%N) python bench/gpu_fit.py --data-dir DIR --label study-fast --preset study \\
      --set pretrained=false [--set engine=fastai] [--no-cudnn-benchmark] [--profile] [--out DIR]

Run it in a fresh process per measurement: ``T0`` (the shell's clock just before starting Python;
default: the process's start time from /proc) is the zero of every time printed. The run goes
through ``instatag.train.train`` (the CLI's path: vocabulary version, training_runs row, lr_find,
epochs, model files, model_versions row) on an existing data dir (ingested, vocabulary built).
Phases are read off the training's own log lines: imports, CUDA ready, the run registered, data on
the device, network ready (fast loop), lr_find done, first and last epoch, model registered.
``--profile`` then profiles one more epoch of the same engine with torch.profiler (kernel count,
host syncs, device busy time) into the JSON and a table file beside it. Writes
``<out>/gpu-fit-<label>-<time>.json`` (default out: bench/results).
"""

from __future__ import annotations

import os
import time

T_PY = time.time()  # noqa: E402 - before any import that takes time

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

#: (phase, pattern of the log line that ends it), in order
PHASES = [
    ("run_registered", r"^training run \d+: .* on vocabulary version"),
    ("data_on_device", r"^data in memory on"),
    ("network_ready", r"^fast loop on"),
    ("lr_find_done", r"^lr_find: valley at"),
    ("first_epoch_done", r"^epoch 1/\d+ \w+: train_loss"),
    ("epochs_done", r"^epoch (\d+)/\1 \w+: train_loss"),
    ("model_registered", r"^training run \d+: model version"),
]


def process_start() -> float:
    """The epoch time this process started (Linux /proc), else the script's first line."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, StopIteration, IndexError, ValueError):
        return T_PY


class Marks(logging.Handler):
    """Records (seconds since t0, message) of every log line."""

    def __init__(self, t0: float):
        super().__init__(logging.INFO)
        self.t0, self.lines = t0, []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.created - self.t0, record.getMessage()))


def phases_from(lines: list[tuple[float, str]]) -> dict:
    out = {}
    for name, pattern in PHASES:
        hits = [t for t, msg in lines if re.search(pattern, msg)]
        if hits:
            out[name] = round(hits[-1] if name == "epochs_done" else hits[0], 3)
    return out


def profile_epoch(settings, config, vocab_id: int) -> tuple[dict, str]:
    """One epoch of ``config``'s engine under torch.profiler, after one epoch of warm-up."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from instatag import fitting as ft
    from instatag.labels import LabelPipeline

    pipeline = LabelPipeline.for_version(settings, vocab_id)
    items = pipeline.items(settings)
    labels = pipeline.labels
    config = config.replace(lr=1e-3, epochs=1, freeze_epochs=0)
    valid_idx = ft.valid_indices(items, config, pipeline.valid_pct)
    n_valid = len(valid_idx)
    engine = ft.engine(config, "cuda", len(items) - n_valid, n_valid, settings.resized_side)
    if engine == "fast":
        from instatag import fastfit, imageprep, memdata

        x = memdata.resident(items, labels, config, "cuda", valid_idx, settings.resized_side)
        net = fastfit.network(config.arch, len(labels), config, settings, False)
        fmt = torch.channels_last if fastfit.cuda_format(config.arch)[1] else torch.contiguous_format
        net = net.to("cuda", memory_format=fmt)
        groups = fastfit.param_groups(net, config.arch)
        loop = fastfit.Loop(net, groups, fastfit.Resident(*x), imageprep.Preprocessing.for_config(config),
                            ft.plain_loss(config), config, "cuda")
        phase = fastfit.fine_tune_phases(config, 1e-3, len(groups))

        def one_epoch():
            fastfit.run_phases(loop, phase, lambda e: None)
    else:
        import tempfile

        tmp = tempfile.mkdtemp()
        learn = ft.learner(items, labels, config, settings, Path(tmp))
        learn.unfreeze()

        def one_epoch():
            learn.fit_one_cycle(1, 1e-3)
    one_epoch()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t = time.perf_counter()
        one_epoch()
        torch.cuda.synchronize()
        wall = time.perf_counter() - t
    events = prof.key_averages()
    count = {e.key: e.count for e in events}
    device_us = sum(e.self_device_time_total for e in events if e.device_type.name == "CUDA")
    launches = sum(n for k, n in count.items() if k in ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx",
                                                           "cudaLaunchKernelExC"))
    summary = {
        "engine": engine, "epoch_wall_s": round(wall, 4), "device_busy_s": round(device_us / 1e6, 4),
        "device_busy_share": round(device_us / 1e6 / wall, 3),
        "kernel_launches": launches, "graph_launches": count.get("cudaGraphLaunch", 0),
        "stream_syncs": count.get("cudaStreamSynchronize", 0), "memcpy_async": count.get("cudaMemcpyAsync", 0),
        "item_calls": count.get("aten::_local_scalar_dense", 0),
        "steps": (len(items) - n_valid) // config.bs,
    }
    table = events.table(sort_by="self_cpu_time_total", row_limit=25)
    table += "\n\n" + events.table(sort_by="self_cuda_time_total", row_limit=15)
    return summary, table


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", required=True, type=Path)
    ap.add_argument("--label", required=True)
    ap.add_argument("--preset", default="study")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--cudnn-benchmark", action="store_true", help="fast engine: cuDNN autotuning on")
    ap.add_argument("--no-cudnn", action="store_true", help="cuDNN off (PyTorch's own convolutions)")
    ap.add_argument("--amp", choices=["bf16", "off"], help="fast engine: mixed precision (off: float32 + TF32)")
    ap.add_argument("--no-channels-last", action="store_true", help="fast engine: NCHW tensors")
    ap.add_argument("--no-graphs", action="store_true", help="fast engine: no CUDA graphs (eager steps)")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    t0 = float(os.environ.get("T0") or process_start())
    marks = Marks(t0)
    logging.basicConfig(level=logging.INFO, format="%(relativeCreated)7.0f ms %(name)s: %(message)s")
    logging.getLogger().addHandler(marks)
    os.environ["INSTATAG_DATA_DIR"] = str(args.data_dir)
    for var in ("INSTATAG_DATABASE_URL", "AIRFLOW_CONN_INSTATAG_DB"):
        os.environ.pop(var, None)
    wall = {"python_started": round(T_PY - t0, 3)}

    from instatag import fastfit, trainconfig
    from instatag import fitting as ft
    from instatag import train as tr
    from instatag.settings import load_settings

    # torch is not imported here: train() imports it, while memdata.Prefetch decodes the images
    fastfit.CUDNN_BENCHMARK = args.cudnn_benchmark
    fastfit.AMP = args.amp
    fastfit.CHANNELS_LAST = False if args.no_channels_last else None
    fastfit.GRAPHS = not args.no_graphs
    if args.no_cudnn:  # imports torch before the run
        import torch

        torch.backends.cudnn.enabled = False
    settings = load_settings()
    overrides = dict(item.split("=", 1) for item in args.set)
    config = tr.config_from(args.preset, **{k: trainconfig._parse_value(v) for k, v in overrides.items()})
    amp, channels_last = fastfit.cuda_format(config.arch)
    switches = {"cudnn_benchmark": fastfit.CUDNN_BENCHMARK, "cuda_graphs": fastfit.GRAPHS, "amp": amp,
                "channels_last": channels_last,
                "cudnn": not args.no_cudnn}
    wall["train_called"] = round(time.time() - t0, 3)
    model_id = tr.train(settings, config)
    wall["model_registered_returned"] = round(time.time() - t0, 3)
    import torch

    wall.update(phases_from(marks.lines))

    from sqlalchemy import select

    from instatag import db
    from instatag.schema import model_versions, training_epochs, training_runs

    with db.get_engine(settings).connect() as conn:
        mv = conn.execute(select(model_versions).where(model_versions.c.id == model_id)).mappings().one()
        run = conn.execute(select(training_runs).where(training_runs.c.id == mv["training_run_id"])).mappings().one()
        epochs = conn.execute(select(training_epochs).where(training_epochs.c.training_run_id == run["id"])
                              .order_by(training_epochs.c.epoch)).mappings().all()
    from machine import machine_info, save_result

    epoch_s = [round(e["seconds"], 4) for e in epochs]
    total = wall.get("model_registered", wall["model_registered_returned"])
    result = {
        "benchmark": "gpu-fit",
        "label": args.label,
        "what": "instatag.train.train from process start to the registered model (T0: the shell's clock before "
                "python started), phases from the training's log lines; epoch seconds from training_epochs",
        "preset": args.preset, "overrides": overrides, "switches": switches,
        "modules_loaded": {m: m in sys.modules for m in ("torch._dynamo", "torchvision", "timm", "fastai", "sympy",
                                                         "torch.optim")},
        "config": config.to_dict(), "device": run["device"],
        "engine": ft.engine(config, "cuda" if torch.cuda.is_available() else "cpu", mv["params"]["n_train"],
                            mv["params"]["n_valid"], settings.resized_side),
        "total_s": total,
        "train_call_s": round(total - wall["train_called"], 3),
        "marks_s": wall,
        "epochs": len(epochs), "epoch_seconds": epoch_s, "epochs_sum_s": round(sum(epoch_s), 3),
        "n_train": mv["params"]["n_train"], "n_valid": mv["params"]["n_valid"],
        "images_seen": epochs[-1]["images_seen"] if epochs else 0,
        "base_lr": mv["params"]["base_lr"],
        "lr_find_points": len((run["lr_find"] or {}).get("lrs", [])),
        "final_epoch": {k: mv["params"]["final_epoch"][k] for k in ("train_loss", "valid_loss", "metrics")}
        if mv["params"]["final_epoch"] else None,
        "machine": machine_info(),
    }
    if args.profile:
        try:
            summary, table = profile_epoch(settings, config, run["vocab_version_id"])
        except Exception as exc:  # noqa: BLE001 - the timed run above stands; say why the profile is missing
            import traceback

            summary, table = {"error": f"{type(exc).__name__}: {exc}"}, traceback.format_exc()
        result["profile_one_epoch"] = summary
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"gpu-profile-{args.label}.txt").write_text(table)
    path = save_result(args.out, f"gpu-fit-{args.label}", result)
    print(f"{args.label}: total {result['total_s']} s; marks {json.dumps(wall)}", file=sys.stderr)
    print(f"written to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
