"""Safe model files: ``model.safetensors`` (tensors only) and ``model.json`` (metadata).

Nothing is pickled, so loading a model file cannot run code. ``save`` returns the sha256 of
``model.safetensors``; the caller records it (``model_versions.sha256``) and every ``load``
verifies it before reading a tensor. ``model.json`` is *not* covered by that hash; it holds no
tensors and is what training wrote: nothing adds to it later (the tuned thresholds live in the
database, ``instatag.registry``). ``update_meta`` rewrites fields of a copy (tests, tools).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .errors import UserError
from .files import write_atomic

WEIGHTS = "model.safetensors"
META = "model.json"


class HashMismatch(UserError):
    """A model file's sha256 is not the one recorded for it."""


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "torchvision", "fastai", "timm", "safetensors", "instatag"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _dumps(meta: dict) -> bytes:
    """JSON of ``meta``; numpy scalars and arrays become plain numbers and lists."""
    return json.dumps(meta, indent=2, sort_keys=True, default=lambda o: o.tolist()).encode()


def weights_path(path: Path) -> Path:
    """``model.safetensors`` of ``path``: the model folder or that file itself."""
    path = Path(path)
    return path / WEIGHTS if path.is_dir() else path


def save(directory: Path, state_dict: dict, meta: dict) -> str:
    """Write ``directory/model.safetensors`` and ``directory/model.json``; returns the weights' sha256."""
    from safetensors.torch import save

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    data = save(tensors)
    digest = hashlib.sha256(data).hexdigest()
    write_atomic(directory / WEIGHTS, data, durable=True)
    meta = {**meta, "weights_sha256": digest, "libraries": library_versions()}
    write_atomic(directory / META, _dumps(meta), durable=True)
    return digest


def read_meta(path: Path) -> dict:
    """``model.json`` next to ``path`` (the model folder or its ``model.safetensors``)."""
    meta_path = weights_path(path).with_name(META)
    try:
        return json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise UserError(f"{meta_path}: no such file (a model folder holds {WEIGHTS} and {META})") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{meta_path}: not valid JSON ({exc})") from None


def load(path: Path, expected_sha256: str | None) -> tuple[dict, dict]:
    """(state dict, metadata) of a model file, after checking its sha256.

    ``path`` is the model folder or its ``model.safetensors``. ``expected_sha256`` is the hash on
    record (``model_versions.sha256``); None compares with the one ``model.json`` states, which
    only guards against damage, not tampering.
    """
    from safetensors.torch import load as load_bytes

    weights = weights_path(path)
    meta = read_meta(weights)
    try:
        data = weights.read_bytes()  # hash and parse the same bytes
    except FileNotFoundError:
        raise UserError(f"{weights}: no such model file") from None
    digest = hashlib.sha256(data).hexdigest()
    expected = expected_sha256 or meta.get("weights_sha256")
    if not expected or digest != expected.lower():
        raise HashMismatch(f"{weights}: sha256 {digest} does not match the recorded {expected}; "
                           "refusing to load a model file that changed since it was registered")
    return load_bytes(data), meta


def update_meta(directory: Path, **fields) -> dict:
    """Add or replace fields of ``model.json``; returns the new metadata. The pipeline never calls it
    (model.json stays what training wrote); tests and tools use it to make variants of a model file."""
    meta_path = weights_path(directory).with_name(META)
    meta = {**read_meta(meta_path), **fields}
    write_atomic(meta_path, _dumps(meta), durable=True)
    return meta
