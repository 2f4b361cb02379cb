"""Batched inference from model files: evaluation, scoring, ``instatag predict`` and the report.

Preprocessing is the contract of ``instatag.imageprep``, as model.json records it
(``Preprocessing.from_meta``), the same code that makes the validation batches during training:
the central square resized to ``size`` x ``size`` (PIL bilinear), pixels scaled to [0, 1] and
normalised with the model's mean and std (``Predictor.inputs``). Images are
decoded in a thread pool (PIL releases the GIL) while the previous batch runs through the
network. On CUDA the network runs channels_last under bf16 (fp16 where bf16 is unsupported)
autocast.

Loading: a process loads a model version once (``cached``: reused until its files change, the
hash verified on each load) and builds the network without fastai (``archs.build_plain``), since
every Airflow 3 task is a fresh process that pays its imports: torch, torchvision and timm only.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict, deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import imageprep
from .errors import UserError
from .settings import Settings

if TYPE_CHECKING:
    from .progress import Meter

log = logging.getLogger(__name__)


def resolve_device(name: str = "auto") -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("INSTATAG_DEVICE is cuda but no CUDA device is available")
    return name


class Predictor:
    """A model version ready to predict: ``predict_paths(paths) -> probabilities [n, n_labels]``."""

    def __init__(self, state_dict: dict, meta: dict, device: str = "auto", model_version_id: int | None = None):
        import torch

        from . import archs

        self.meta = meta
        self.model_version_id = model_version_id
        self.labels: list[str] = list(meta["labels"])
        self.arch: str = meta["arch"]
        self.size: int = int(meta["size"])
        self.device = resolve_device(device)
        ps = (meta.get("params") or {}).get("ps", 0.5)  # the head's layout depends on it (fastai omits Dropout(0))
        net = archs.build_plain(self.arch, len(self.labels), output_bias=bool(meta.get("output_bias")), ps=ps)
        net.load_state_dict(state_dict, strict=True)
        net.eval().to(self.device)
        if self.device == "cuda":
            net = net.to(memory_format=torch.channels_last)
        self.net = net
        #: the image -> tensor contract the model was trained with (model.json)
        self.prep = imageprep.Preprocessing.from_meta(meta)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_files(cls, directory: Path, expected_sha256: str | None = None, device: str = "auto") -> Predictor:
        """From a model folder; without ``expected_sha256`` the hash stated in its model.json is checked.
        Cached per process (``cached``)."""
        return cached(Path(directory), expected_sha256, device)

    @classmethod
    def for_version(cls, settings: Settings, model_version_id: int) -> Predictor:
        """The registered model version, its file verified against ``model_versions.sha256`` (on its first
        load in this process, and again whenever it changed: ``cached``)."""
        from . import db, registry

        with db.get_engine(settings).connect() as conn:
            row = registry.row(conn, model_version_id)
        return cached(settings.data_dir / row["artifact_path"], row["sha256"], settings.device, int(model_version_id))

    # ------------------------------------------------------------------ ranking
    @property
    def ranking(self) -> str:
        """How the model orders labels (``instatag.ranking``), as recorded in model.json at training;
        models from before it: by probability."""
        return self.meta.get("ranking") or "probability"

    @property
    def frequency_order(self) -> list[int] | None:
        """Label indices from the most to the least frequent in training (model.json), or None for
        models from before it."""
        names = self.meta.get("frequency_order") or []
        index = {label: j for j, label in enumerate(self.labels)}
        return [index[n] for n in names] if names else None

    def rank_scores(self, probs, ranking: str | None = None) -> np.ndarray:
        """Scores ``[n, n_labels]`` whose descending order is the model's ranking of each image's labels
        (``ranking``: another order, e.g. to compare both in the evaluation)."""
        from . import ranking as rankings

        return rankings.rank_scores(probs, ranking or self.ranking, self.frequency_order)

    # ------------------------------------------------------------------ prediction
    @property
    def tta(self) -> bool:
        """Whether the model averages each image with its mirror image (``flip_tta`` in model.json)."""
        return bool(self.meta.get("flip_tta", False))

    def predict_tensor(self, x, tta: bool | None = None) -> np.ndarray:
        """Probabilities for a batch of preprocessed, not yet normalised images.

        ``x``: [n, 3, size, size], uint8 (0..255) or float (0..1), any device. ``tta``: also average
        with the mirror images (default: the model's ``flip_tta``)."""
        import torch

        tta = self.tta if tta is None else tta
        x = self.inputs(x)
        if self.device == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = torch.bfloat16 if self.device == "cuda" and torch.cuda.is_bf16_supported() else torch.float16
        with torch.inference_mode(), torch.autocast("cuda", dtype=dtype, enabled=self.device == "cuda"):
            logits = self.net(x).float()
            probs = torch.sigmoid(logits)
            if tta:
                probs = (probs + torch.sigmoid(self.net(torch.flip(x, dims=[3])).float())) / 2
        return probs.cpu().numpy().astype(np.float32)

    def inputs(self, x):
        """The network's input for a batch of evaluation crops: ``x`` uint8 ``[n, 3, size, size]`` (0..255)
        or float (0..1), any device -> float32 on the model's device, normalised (``Preprocessing.inputs``)."""
        return self.prep.inputs(x.to(self.device, non_blocking=True))

    def inputs_for_paths(self, paths: Sequence[Path | str], batch_size: int = 256):
        """The network's input (float32 ``[n, 3, size, size]`` on the model's device) for image files, made by
        the code ``predict_paths`` runs; for tests and tools that need the exact tensor."""
        from concurrent.futures import ThreadPoolExecutor

        import torch

        with ThreadPoolExecutor(2, thread_name_prefix="decode") as pool:
            return torch.cat([self.inputs(torch.from_numpy(b).permute(0, 3, 1, 2))
                              for b in self._decoded(list(paths), batch_size, pool)])

    def _predict_arrays(self, batches: Iterator[np.ndarray], tta: bool | None,
                        meter: Meter | None = None) -> np.ndarray:
        import torch

        out = []
        for b in batches:
            out.append(self.predict_tensor(torch.from_numpy(b).permute(0, 3, 1, 2), tta))
            if meter is not None:
                meter.update(len(b))
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)), np.float32)

    def predict_images(self, images: Sequence, batch_size: int = 256, tta: bool | None = None) -> np.ndarray:
        """Probabilities [n, n_labels] for PIL images (any size; converted to RGB here)."""
        arrays = [np.asarray(self.prep.center_crop_resize(im.convert("RGB"))) for im in images]
        batches = (np.stack(arrays[i:i + batch_size]) for i in range(0, len(arrays), batch_size))
        return self._predict_arrays(batches, tta)

    def predict_paths(self, paths: Sequence[Path | str], batch_size: int = 256, tta: bool | None = None,
                      workers: int | None = None, meter: Meter | str = "predicting") -> np.ndarray:
        """Probabilities [n, n_labels] (float32) for image files, in order.

        Files are decoded by ``workers`` threads (default: one per core, at most 8), two batches
        ahead of the network. Progress goes to ``meter`` (``instatag.progress``: a log line every
        few seconds), or with a string to a Meter of that name over these files."""
        from concurrent.futures import ThreadPoolExecutor

        from .progress import Meter

        paths = list(paths)
        own = isinstance(meter, str)
        if own:
            meter = Meter(meter, len(paths), unit="images")
        workers = workers or min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
            probs = self._predict_arrays(self._decoded(paths, batch_size, pool), tta, meter)
        if own:
            meter.close()
        return probs

    def _decoded(self, paths: list, batch_size: int, pool) -> Iterator[np.ndarray]:
        pending: deque = deque()
        for i in range(0, len(paths), batch_size):
            pending.append([pool.submit(self.prep.load_array, p) for p in paths[i:i + batch_size]])
            if len(pending) > 2:
                yield np.stack([f.result() for f in pending.popleft()])
        while pending:
            yield np.stack([f.result() for f in pending.popleft()])


# --------------------------------------------------------------------------- one load per process
#: model versions kept loaded per process, the most recently used: a task uses one, the web server or
#: ``instatag demo`` (evaluate, then score) at most two at a time
CACHE_SIZE = 2
_cache: OrderedDict[tuple, tuple[tuple, Predictor]] = OrderedDict()
_cache_lock = threading.Lock()


def _file_state(path: Path) -> tuple:
    """What changes whenever a file's content may have: device, inode (a replaced file), size, mtime and
    ctime (which no user can set back)."""
    st = path.stat()
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def cached(path: Path, expected_sha256: str | None, device: str = "auto",
           model_version_id: int | None = None) -> Predictor:
    """The Predictor of a model file (its folder or ``model.safetensors``), loaded once per process.

    Keyed by (model version id, file, expected sha256, device); reused while ``model.safetensors`` and
    ``model.json`` keep the state they had before they were read (``_file_state``). A first load in a
    process, and any load after either file changed, reads and hashes the weights again
    (``modelfile.load``: a mismatch raises ``HashMismatch``), so a changed file is never used stale
    and a changed model.json is seen. The tuned thresholds are not part of it (``registry.thresholds``
    reads them from the database), so a new evaluation needs no reload. Returns the same object while
    nothing changed: callers must not modify it. Thread-safe; at most ``CACHE_SIZE`` entries."""
    from . import modelfile

    weights = modelfile.weights_path(path).absolute()
    key = (model_version_id, str(weights), (expected_sha256 or "").lower(), device)
    with _cache_lock:
        try:
            state = (_file_state(weights), _file_state(weights.with_name(modelfile.META)))
        except FileNotFoundError:
            state = None  # modelfile.load says which file is missing
        hit = _cache.get(key)
        if hit is not None and state is not None and hit[0] == state:
            _cache.move_to_end(key)
            return hit[1]
        _cache.pop(key, None)
        tensors, meta = modelfile.load(weights, expected_sha256)
        predictor = Predictor(tensors, meta, device, model_version_id)
        _cache[key] = (state, predictor)
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
        return predictor

