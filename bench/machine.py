"""What every benchmark writes about the machine it ran on."""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def machine_info() -> dict:
    """Platform, CPUs, memory, load, library versions and the GPU (when torch sees one)."""
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages * size / 2**30, 1)
    except (ValueError, OSError):
        pass
    from PIL import __version__ as pillow

    info["pillow"] = pillow
    if "torch" in sys.modules or os.environ.get("INSTATAG_BENCH_TORCH", "1") == "1":
        try:
            import torch

            info["torch"] = torch.__version__
            info["torch_threads"] = torch.get_num_threads()
            if torch.cuda.is_available():
                info["gpu"] = torch.cuda.get_device_name(0)
                info["cuda"] = torch.version.cuda
        except ImportError:
            pass
    return info


def save_result(out: Path, name: str, result: dict) -> Path:
    """Print ``result`` as indented JSON and write it to ``out/<name>-<UTC time>.json``; that path."""
    text = json.dumps(result, indent=2)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(text + "\n")
    return path
