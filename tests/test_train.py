"""Training on CPU with tiny settings (generated images, size 32, 1+1 epochs): both phases recorded,
validation preprocessed exactly as inference, lr_find leaves the weights alone, registration in the
database (SQLite and PostgreSQL), failures registering nothing, presets and the CLI."""

from __future__ import annotations

import hashlib
import logging
import os

import numpy as np
import pytest
from builders import TINY_TRAIN as TINY
from builders import TRAIN_LABELS as LABELS
from builders import FakeClock, photo_items
from builders import varied_photos as _photos
from sqlalchemy import insert, select

from instatag import cli, db, modelfile, ranking
from instatag import fitting as ft
from instatag import schema as t
from instatag import train as tr
from instatag.errors import UserError
from instatag.imagestore import resized_path
from instatag.labels import Item, LabelPipeline, is_valid

#: the validation share of these tests' items (a vocabulary version's ``valid_pct``)
VALID = 0.3


@pytest.fixture
def items(tmp_path) -> list[Item]:
    return photo_items(tmp_path)


def add_labelled_images(settings, n: int = 24) -> int:
    """``n`` generated photos in the resized store, table images and a vocabulary version over them."""
    with db.get_engine(settings).begin() as conn:
        rows = []
        for k, (data, labels) in enumerate(_photos(n)):
            sha = hashlib.sha256(data).hexdigest()
            rel = resized_path(sha)
            (settings.data_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (settings.data_dir / rel).write_bytes(data)
            image_id = conn.execute(insert(t.images).values(
                sha256=sha, post=f"p{k}", source_path=f"/drop/{k}.jpg", format="JPEG", width=48, height=40,
                original_path=rel, resized_path=rel)).inserted_primary_key[0]
            rows += [(image_id, label) for label in labels]
        counts = {label: sum(lab == label for _, lab in rows) for label in LABELS}
        vid = conn.execute(insert(t.vocab_versions).values(
            config={"grouping": {}}, config_sha256="c" * 64, n_posts=n, n_images=n, n_unlabelled=0,
            n_raw_tags=len(LABELS), n_lemmas=len(LABELS), n_labels=len(LABELS),
            stats={"train_counts": counts}, valid_pct=VALID)).inserted_primary_key[0]
        conn.execute(insert(t.vocab_labels), [{"vocab_version_id": vid, "label": label, "idx": i,
                                               "count": counts[label], "members": [label]}
                                              for i, label in enumerate(LABELS)])
        conn.execute(insert(t.image_labels), [{"vocab_version_id": vid, "image_id": i, "label": label}
                                              for i, label in rows])
    return vid


def _rows(settings, table, **where):
    q = select(table)
    for k, v in where.items():
        q = q.where(table.c[k] == v)
    with db.get_engine(settings).connect() as conn:
        return [dict(r) for r in conn.execute(q).mappings()]


# --------------------------------------------------------------------------- the core, no database
@pytest.mark.slow
def test_fit_records_both_phases(items, tmp_path):
    import torch

    torch.set_num_threads(1)
    seen = []
    result = ft.fit(items, LABELS, tr.TrainConfig(**TINY), sink=seen.append, valid_pct=VALID)
    assert [(r.epoch, r.phase) for r in result.epochs] == [(0, "frozen"), (1, "unfrozen")]
    assert seen == result.epochs
    n_train = result.meta["n_train"]
    assert n_train + result.meta["n_valid"] == len(items) and result.meta["n_valid"] > 0
    per_epoch = n_train // 8 * 8  # fastai drops the last incomplete training batch
    assert [r.images_seen for r in result.epochs] == [per_epoch, 2 * per_epoch]
    for r in result.epochs:
        assert np.isfinite(r.train_loss) and np.isfinite(r.valid_loss) and r.seconds > 0
        assert set(r.metrics) == {"accuracy_multi", "precision_at_1"}
        assert all(0 <= v <= 1 for v in r.metrics.values())
    assert result.lr_find is None and result.meta["base_lr"] == 1e-3 and result.device == "cpu"
    assert result.meta["labels"] == LABELS and result.meta["mean"] == [0.485, 0.456, 0.406]
    from instatag.imageprep import Preprocessing

    assert result.meta["preprocessing"] == Preprocessing.for_config(tr.TrainConfig(**TINY)).to_meta()
    assert result.meta["data_path"] == "files"
    # the files hold what inference needs: rebuild the network and predict from the files alone
    from instatag.inference import Predictor

    sha = modelfile.save(tmp_path / "m", result.state_dict, result.meta)
    predictor = Predictor.from_files(tmp_path / "m", sha, device="cpu")
    paths = [it.resized_path for it in items]
    probs = predictor.predict_paths(paths)
    assert probs.shape == (len(items), len(LABELS)) and ((probs > 0) & (probs < 1)).all()
    # the default ranking and mirror-image averaging travel in model.json
    counts = {label: sum(label in it.labels for it in items) for label in LABELS}
    assert result.meta["frequency_order"] == sorted(LABELS, key=lambda lab: (-counts[lab], lab))
    assert result.meta["ranking"] == predictor.ranking == "probability" and predictor.tta
    np.testing.assert_array_equal(probs, predictor.predict_paths(paths, tta=True))
    assert not np.allclose(probs, predictor.predict_paths(paths, tta=False))
    np.testing.assert_array_equal(predictor.rank_scores(probs), probs)  # rank 1: the most probable label
    # dominant_first stays an option, from the frequency order in model.json
    assert (predictor.rank_scores(probs, "dominant_first").argmax(axis=1) == np.argmax(ranking.dominant_probs(
        probs, [LABELS.index(lab) for lab in result.meta["frequency_order"]]), axis=1)).all()


@pytest.mark.parametrize("size", [32, 64])
def test_memory_data_path_batches(items, size):
    """The in-memory path: validation exactly the inference preprocessing, training crops at the input size
    from the whole image on a canvas of twice that side (capped by the store's side), targets as the
    DataBlock's."""
    import torch

    from instatag import archs
    from instatag.imageprep import load_array
    from instatag.labels import is_valid

    config = tr.TrainConfig(**{**TINY, "size": size, "data_path": "memory"})
    dls = ft.dataloaders(items, LABELS, config, "cpu", resized_side=96, valid_pct=VALID)
    assert dls.train.x.shape[-1] == min(2 * size, 96) and dls.valid.x.shape[-1] == size
    xb, yb = dls.valid.one_batch()
    valid = [it for it in items if is_valid(it.sha256, VALID)][:len(xb)]
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in archs.stats("resnet18"))
    ref = torch.stack([torch.tensor(load_array(it.resized_path, size)).permute(2, 0, 1) for it in valid]) / 255
    np.testing.assert_allclose(xb.float().numpy(), ((ref - mean) / std).numpy(), atol=1e-5)
    assert yb.tolist() == [[float(lab in it.labels) for lab in LABELS] for it in valid]
    xt, yt = dls.train.one_batch()
    assert tuple(xt.shape) == (8, 3, size, size) and tuple(yt.shape) == (8, len(LABELS))
    assert len(dls.train) == (len(items) - len(dls.valid.x)) // 8  # the last incomplete batch is dropped
    # training crops come from the whole image: each canvas holds its image as it is, with its size beside it
    from PIL import Image

    from instatag import imageprep

    train = [it for it in items if not is_valid(it.sha256, VALID)]
    sizes = [Image.open(it.resized_path).size for it in train]
    assert dls.train.sizes.tolist() == [list(wh) for wh in sizes]
    side = dls.train.x.shape[-1]
    np.testing.assert_array_equal(dls.train.x[0].numpy(), imageprep.canvas(
        np.asarray(Image.open(train[0].resized_path).convert("RGB")), side))
    # and every batch draws new crops
    prep = dls.train.prep
    a, b = (prep.random_crops(dls.train.x[:8], dls.train.sizes[:8]) for _ in range(2))
    assert a.shape == (8, 3, size, size) and not torch.allclose(a, b)


def test_auto_data_path_is_memory_on_cuda_when_it_fits():
    c = tr.TrainConfig(**TINY)
    assert ft.data_path(c, "cpu", 1000, 100, 160) == "files"
    assert ft.data_path(c, "cuda", 1000, 100, 160) == "memory"
    assert ft.data_path(c, "cuda", 10**8, 100, 160) == "files"  # too many pixels to hold
    assert ft.data_path(c.replace(data_path="memory"), "cpu", 1000, 100, 160) == "memory"


@pytest.mark.slow
def test_frozen_only_training_keeps_the_pretrained_body(items):
    """epochs=0: fine_tune's first phase alone (efficientnet_lite0 with its packaged weights)."""
    import torch

    from instatag import archs

    torch.set_num_threads(1)
    config = tr.TrainConfig(**{**TINY, "arch": "efficientnet_lite0", "pretrained": True, "epochs": 0,
                               "data_path": "memory"})
    result = ft.fit(items, LABELS, config, valid_pct=VALID)
    assert [r.phase for r in result.epochs] == ["frozen"]
    reference = archs.build("efficientnet_lite0", len(LABELS), pretrained=True).state_dict()
    convs = [k for k, v in reference.items() if k.startswith("0.") and v.ndim == 4]
    assert convs and all(torch.equal(result.state_dict[k], reference[k]) for k in convs)


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_lite0"])  # ImageNet's statistics, and 0.5/0.5
@pytest.mark.parametrize("path", ["files", "memory"])
def test_predictor_inputs_are_the_validation_batches(items, arch, path):
    """The Predictor's own code (inference.py: decoding, evaluation crop, scaling, normalisation, from the
    preprocessing record training writes into model.json) makes exactly the tensors the training path's
    validation batches hold for the same images, on both data paths."""
    import torch

    from instatag import archs, imageprep
    from instatag.inference import Predictor
    from instatag.labels import is_valid

    config = tr.TrainConfig(**{**TINY, "arch": arch, "data_path": path})
    dls = ft.dataloaders(items, LABELS, config, "cpu", valid_pct=VALID)
    batches = list(dls.valid)
    xb = torch.cat([x.as_subclass(torch.Tensor) for x, _ in batches])
    valid = [it for it in items if is_valid(it.sha256, VALID)]
    assert torch.cat([y for _, y in batches]).tolist() == [[float(lab in it.labels) for lab in LABELS]
                                                           for it in valid]
    prep = imageprep.Preprocessing.for_config(config)  # what fit records (test_fit_records_both_phases)
    meta = {"arch": arch, "labels": LABELS, "size": config.size, "mean": list(prep.mean), "std": list(prep.std),
            "preprocessing": prep.to_meta()}
    predictor = Predictor(archs.build_plain(arch, len(LABELS)).state_dict(), meta, device="cpu")
    x = predictor.inputs_for_paths([it.resized_path for it in valid], batch_size=5)
    assert x.shape == xb.shape == (len(valid), 3, 32, 32)
    torch.testing.assert_close(x, xb, atol=1e-5, rtol=0)
    assert abs(float(x.mean())) < 3  # normalised, not raw pixels
    xt, _ = dls.train.one_batch()
    assert tuple(xt.shape) == (8, 3, 32, 32)


@pytest.mark.slow
def test_lr_find_keeps_the_weights(items, tmp_path):
    import torch

    torch.set_num_threads(1)
    config = tr.TrainConfig(**{**TINY, "lr": "auto", "lr_find_iters": 20})
    learn = ft.learner(items, LABELS, config, tr.Settings(), tmp_path, VALID)
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    lr, curve = ft._lr_find(learn, config)
    after = learn.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert 1e-7 < lr < 10 and curve["suggested"] == lr and curve["method"] == "valley"
    assert 5 <= len(curve["lrs"]) == len(curve["losses"]) <= 20
    assert curve["lrs"] == sorted(curve["lrs"])


def test_too_few_images_is_a_clear_error(items):
    with pytest.raises(UserError, match="too few labelled images"):
        ft.dataloaders(items[:6], LABELS, tr.TrainConfig(**TINY), "cpu", valid_pct=VALID)


# --------------------------------------------------------------------------- with the database
@pytest.mark.slow
def test_train_registers_a_candidate(settings):
    import torch

    from instatag.inference import Predictor

    torch.set_num_threads(1)
    vid = add_labelled_images(settings)
    mid = tr.train(settings, tr.TrainConfig(**TINY))
    (mv,) = _rows(settings, t.model_versions)
    assert mv["id"] == mid and mv["status"] == "candidate" and mv["vocab_version_id"] == vid
    assert mv["artifact_path"] == f"models/{mid}/model.safetensors"
    assert mv["params"]["final_epoch"]["phase"] == "unfrozen" and "valid_pct" not in mv["params"]
    # the split is the vocabulary version's (vocab_versions.valid_pct), not a training parameter
    items = LabelPipeline.for_version(settings, vid).items(settings)
    assert mv["params"]["n_valid"] == sum(is_valid(it.sha256, VALID) for it in items) > 0
    path = settings.data_dir / mv["artifact_path"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == mv["sha256"]
    assert sorted(p.name for p in settings.models_dir.iterdir()) == [str(mid)]  # no staging left behind
    (run,) = _rows(settings, t.training_runs)
    assert run["id"] == mv["training_run_id"] and run["status"] == "succeeded" and run["error"] is None
    assert run["params"]["arch"] == "resnet18" and run["device"] == "cpu" and run["finished_at"] is not None
    epochs = _rows(settings, t.training_epochs, training_run_id=run["id"])
    assert [(e["epoch"], e["phase"]) for e in sorted(epochs, key=lambda e: e["epoch"])] == [(0, "frozen"),
                                                                                             (1, "unfrozen")]
    meta = modelfile.read_meta(path)
    assert meta["vocab_version_id"] == vid and meta["labels"] == LABELS and meta["training_run_id"] == run["id"]
    p = Predictor.for_version(settings, mid)
    assert p.labels == LABELS and p.model_version_id == mid
    path.write_bytes(path.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(modelfile.HashMismatch):
        Predictor.for_version(settings, mid)


def _fake_result():
    from instatag import archs

    net = archs.build("resnet18", len(LABELS))
    return ft.FitResult(net.state_dict(), {"arch": "resnet18", "size": 32, "mean": [0.5] * 3, "std": [0.5] * 3,
                                           "labels": LABELS, "base_lr": 1e-3, "n_train": 1, "n_valid": 1},
                        None, [], "cpu")


@pytest.mark.parametrize("where", ["fit", "save"])
def test_a_failure_marks_the_run_failed_and_registers_nothing(sqlite_settings, monkeypatch, where):
    s = sqlite_settings
    add_labelled_images(s, 12)

    def failing_fit(items, labels, config, settings, sink, on_lr_find, counts=None, prefetch=None, valid_pct=None):
        sink(ft.EpochRecord(0, "frozen", 0.7, 0.6, {}, 8, 0.1))
        if where == "fit":
            raise RuntimeError("CUDA out of memory (simulated)")
        return _fake_result()

    def failing_save(directory, state_dict, meta):
        directory.mkdir(parents=True)
        (directory / modelfile.WEIGHTS).write_bytes(b"half")
        raise OSError("No space left on device (simulated)")

    monkeypatch.setattr(tr, "fit", failing_fit)  # as train() calls it
    monkeypatch.setattr(modelfile, "save", failing_save)
    with pytest.raises((RuntimeError, OSError)):
        tr.train(s, tr.TrainConfig(**TINY))
    (run,) = _rows(s, t.training_runs)
    assert run["status"] == "failed" and run["finished_at"] is not None
    assert ("CUDA out of memory" if where == "fit" else "No space left") in run["error"]
    assert _rows(s, t.model_versions) == []
    assert not s.models_dir.exists() or list(s.models_dir.iterdir()) == []
    assert len(_rows(s, t.training_epochs)) == 1  # the epochs it did finish stay on record


def test_a_run_left_running_by_a_killed_process_is_marked_failed_by_the_next_training(sqlite_settings,
                                                                                     monkeypatch):
    """kill -9 leaves no chance to record a failure: the next training finds the run's process gone (same
    host) or silent for hours (another host) and marks it failed with the reason; a live one stays running.
    The models page lists them."""
    import socket
    import subprocess
    import sys
    from datetime import UTC, datetime, timedelta

    from fastapi.testclient import TestClient

    s = sqlite_settings
    vid = add_labelled_images(s, 12)
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    victim.kill()  # SIGKILL
    victim.wait()
    now = datetime.now(UTC)
    here, there = socket.gethostname(), "worker-elsewhere"
    with db.get_engine(s).begin() as conn:
        for pid, host, beat in ((victim.pid, here, now), (1, there, now - timedelta(hours=7)),
                                (1, there, now - timedelta(minutes=5))):
            conn.execute(insert(t.training_runs).values(vocab_version_id=vid, params={}, status="running", pid=pid,
                                                        host=host, heartbeat_at=beat))
    html = TestClient(_app(s)).get("/").text
    assert '<table id="runs">' in html and html.count("(looks dead)") == 2
    assert f"its process {victim.pid} on {here} is gone" in html

    def quick_fit(items, labels, config, settings, sink, on_lr_find, counts=None, prefetch=None, valid_pct=None):
        sink(ft.EpochRecord(0, "frozen", 0.7, 0.6, {}, 8, 0.1))
        return _fake_result()

    monkeypatch.setattr(tr, "fit", quick_fit)
    tr.train(s, tr.TrainConfig(**TINY))
    killed, silent, alive, new = _rows(s, t.training_runs)
    assert killed["status"] == silent["status"] == "failed" and killed["finished_at"] is not None
    assert killed["error"] == f"marked failed by a later training: its process {victim.pid} on {here} is gone (killed?)"
    assert "no sign of life since" in silent["error"] and "over 6 h" in silent["error"]
    assert alive["status"] == "running" and alive["error"] is None
    assert new["status"] == "succeeded" and new["pid"] == os.getpid() and new["host"] == here
    assert new["heartbeat_at"] is not None
    html = TestClient(_app(s)).get("/").text
    assert "(looks dead)" not in html and "marked failed by a later training: its process" in html


def _app(settings):
    from instatag import webapp

    app = webapp.create_app(settings)
    app.dependency_overrides[webapp.airflow_auth()] = lambda: "tester"
    return app


def test_missing_weights_fail_before_a_run_starts(sqlite_settings, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    add_labelled_images(sqlite_settings, 12)
    with pytest.raises(UserError, match="resnet18-f37072fd.pth"):
        tr.train(sqlite_settings, tr.TrainConfig(**{**TINY, "pretrained": True}))
    assert _rows(sqlite_settings, t.training_runs) == []


def test_no_vocabulary_is_a_clear_error(sqlite_settings):
    with pytest.raises(UserError, match="vocab"):
        tr.train(sqlite_settings, tr.TrainConfig(**TINY))


# --------------------------------------------------------------------------- presets and the CLI
def test_presets_and_overrides():
    study = tr.PRESETS["study"]
    assert (study.arch, study.size, study.epochs, study.freeze_epochs, study.lr) == ("resnet18", 64, 15, 15, "auto")
    d = tr.config_from("default", size=32, lr=None)
    assert d.arch == "efficientnet_lite1" and d.pretrained and d.size == 32 and d.lr == 0.01
    assert tr.config_from("study", epochs=2).freeze_epochs == 15
    for bad, match in [({"arch": "vgg"}, "unknown architecture"), ({"lr": "fast"}, "lr must"),
                       ({"loss": "hinge"}, "loss"), ({"epochs": 0, "freeze_epochs": 0}, "at least one epoch"),
                       ({"epochs": 0, "pretrained": False}, "unfrozen epochs are needed"),
                       ({"data_path": "disk"}, "data_path"), ({"ranking": "abc"}, "ranking must"),
                       ({"colour": 1}, "unknown training")]:
        with pytest.raises(UserError, match=match):
            tr.config_from("default", **bad)
    with pytest.raises(UserError, match="unknown preset"):
        tr.config_from("fastest")


def test_cli_flags_override_the_preset():
    parser = cli.build_parser()
    args = parser.parse_args(["train", "--preset", "study", "--size", "48", "--lr", "3e-3", "--no-pretrained",
                              "--set", "label_smoothing=0.1", "--set", "loss=focal", "--workers", "1"])
    c = tr.config_from_args(args)
    assert (c.arch, c.size, c.lr, c.pretrained, c.label_smoothing, c.loss, c.num_workers, c.preset) == (
        "resnet18", 48, 3e-3, False, 0.1, "focal", 1, "study")
    with pytest.raises(UserError, match="NAME=VALUE"):
        tr.config_from_args(parser.parse_args(["train", "--set", "oops"]))


@pytest.mark.slow
def test_cli_trains_the_default_preset_with_pretrained_weights(sqlite_settings, capsys):
    """The default preset's network (efficientnet_lite1) with its packaged ImageNet weights, lr_find, 1+1
    epochs at size 32."""
    import torch

    torch.set_num_threads(1)
    s = sqlite_settings
    add_labelled_images(s)
    code = cli.main(["--database-url", s.database_url, "--data-dir", str(s.data_dir), "train", "--size", "32",
                     "--epochs", "1", "--freeze-epochs", "1", "--bs", "8", "--lr", "auto", "--set", "lr_find_iters=20"])
    out = capsys.readouterr().out
    assert code == 0
    (mv,) = _rows(s, t.model_versions)
    assert f"model version {mv['id']} (candidate)" in out and "frozen" in out and "unfrozen" in out
    assert mv["arch"] == "efficientnet_lite1" and mv["params"]["preset"] == "default"
    (run,) = _rows(s, t.training_runs)
    assert run["lr_find"]["suggested"] == mv["params"]["base_lr"] and len(run["lr_find"]["lrs"]) >= 5
    assert modelfile.read_meta(s.data_dir / mv["artifact_path"])["mean"] == [0.5, 0.5, 0.5]


def test_prior_bias_starts_at_the_label_log_odds_and_round_trips(items, tmp_path):
    import torch

    from instatag.inference import Predictor
    from instatag.labels import is_valid

    torch.set_num_threads(1)
    config = tr.TrainConfig(**{**TINY, "prior_bias": True, "data_path": "memory"})
    learn = ft.learner(items, LABELS, config, tr.Settings(), tmp_path, VALID)
    train = [it for it in items if not is_valid(it.sha256, VALID)]
    freq = np.array([(sum(lab in it.labels for it in train) + 0.5) / (len(train) + 1) for lab in LABELS])
    np.testing.assert_allclose(torch.sigmoid(learn.model[-1][-1].bias).detach().numpy(), freq, rtol=1e-5)
    result = ft.fit(items, LABELS, config, valid_pct=VALID)
    assert result.meta["output_bias"] is True and "1.8.bias" in result.state_dict
    sha = modelfile.save(tmp_path / "m", result.state_dict, result.meta)
    probs = Predictor.from_files(tmp_path / "m", sha, device="cpu").predict_paths([it.resized_path for it in items])
    assert probs.shape == (len(items), len(LABELS))


# --------------------------------------------------------------------------- what the task log shows
def test_batch_log_lines_under_a_fake_clock(caplog, tmp_path):
    """A line at most every 10 s of the clock (here every third batch of 16 images: 48 images in 12 s),
    for training and validation batches, epochs numbered across fits; and for lr_find."""
    import re

    ft.import_fastai()
    from fastai.test_utils import synth_learner

    caplog.set_level(logging.INFO, "instatag.fitting")
    learn = synth_learner(n_trn=7, n_val=3, path=tmp_path)  # batches of 16
    learn.logger = lambda *_: None
    log_cb = ft.batch_log(total_epochs=3, every_s=10, clock=FakeClock(4))
    learn.fit(1, cbs=[log_cb])
    learn.fit(1, cbs=[log_cb])  # fine_tune's second phase: the numbering goes on
    lines = [re.sub(r"loss \d+\.\d{4}$", "loss L", m) for m in caplog.messages]
    assert lines == [f"epoch {e}/3 unfrozen: {what}" for e in (1, 2) for what in (
        "batch 3/7, 4.0 images/s, loss L", "batch 6/7, 4.0 images/s, loss L", "validation batch 3/3, 4.0 images/s")]
    caplog.clear()
    with learn.added_cbs(ft.batch_log(lr_find_iters=7, every_s=10, clock=FakeClock(4))):
        learn.lr_find(end_lr=1e-3, num_it=7, show_plot=False, suggest_funcs=None)
    assert [re.sub(r"loss \d+\.\d{4} at lr \d\.\de-0\d$", "loss L at lr R", m) for m in caplog.messages] == [
        f"lr_find: batch {b}/7, 4.0 images/s, loss L at lr R" for b in (3, 6)]


def _run_quietly(script: str, tmp_path) -> str:
    """Run ``script`` in a fresh Python that turns every warning into an error; its stderr."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(ft.__file__).parents[1]), str(Path(__file__).parent)])}
    proc = subprocess.run([sys.executable, "-W", "error", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


@pytest.mark.slow
def test_a_train_run_raises_no_warning(tmp_path):
    """Both data paths, lr_find and fine_tune, from the first fastai import on (a fresh process), with every
    warning an error: none of ours, and fastai's import-time and lr_find deprecations filtered where raised."""
    script = f"""
import hashlib, logging
from pathlib import Path
logging.basicConfig(level=logging.INFO)
import torch
torch.set_num_threads(1)
from instatag import fitting as ft
from instatag.trainconfig import TrainConfig
from instatag.labels import Item
from test_train import LABELS, TINY, VALID, _photos
items = []
for k, (data, labels) in enumerate(_photos(24)):
    path = Path({str(tmp_path)!r}) / f"{{k}}.jpg"
    path.write_bytes(data)
    items.append(Item(k + 1, hashlib.sha256(data).hexdigest(), path, tuple(sorted(labels, key=LABELS.index))))
ft.fit(items, LABELS, TrainConfig(**{{**TINY, "lr": "auto", "lr_find_iters": 10}}), valid_pct=VALID)
ft.fit(items, LABELS, TrainConfig(**{{**TINY, "data_path": "memory"}}), valid_pct=VALID)
"""
    err = _run_quietly(script, tmp_path)
    assert err.count("instatag.fitting:epoch 2/2 unfrozen: train_loss") == 2 and "lr_find: valley" in err


def test_asymmetric_loss_is_bce_without_its_asymmetry_and_forgives_confident_negatives():
    """loss="asl" (Ridnik et al. 2021): with clip 0 and gamma- 0 it is the binary cross-entropy; with the
    defaults a negative under the clip (p <= 0.05) costs nothing and a positive costs -log p as in BCE."""
    import torch
    import torch.nn.functional as F

    from instatag import fitting

    logits = torch.tensor([[2.0, -1.0, -4.0], [0.5, -3.5, 1.5]])
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    plain = tr.TrainConfig(loss="asl", asl_gamma_neg=0.0, asl_clip=0.0)
    bce = F.binary_cross_entropy_with_logits(logits, targets)
    assert fitting.plain_loss(plain)(logits, targets).item() == pytest.approx(bce.item(), rel=1e-6)
    asl = fitting.plain_loss(tr.TrainConfig(loss="asl"))
    p = torch.sigmoid(logits)
    p_m = (p - 0.05).clamp(min=0)
    expected = torch.where(targets == 1, -torch.log(p), -(p_m ** 4) * torch.log(1 - p_m)).mean()
    assert asl(logits, targets).item() == pytest.approx(expected.item(), rel=1e-6)
    easy = torch.tensor([[-4.0]])  # p = 0.018: under the clip
    assert asl(easy, torch.zeros(1, 1)).item() == 0.0
    assert asl(torch.tensor([[0.3]]), torch.ones(1, 1)).item() == pytest.approx(F.softplus(torch.tensor(-0.3)).item())
    with pytest.raises(UserError, match="asl_clip"):
        tr.TrainConfig(loss="asl", asl_clip=1.0).validate()


def test_set_values_of_the_wrong_type_are_refused_clearly():
    """``--set`` passes JSON values: text, true/false or infinity where a number belongs is a UserError
    naming the field, never a TypeError from a comparison."""
    parser = cli.build_parser()
    for raw, match in [("asl_gamma_neg=abc", "asl_gamma_neg must be a number, not 'abc'"),
                       ('asl_clip="0.1"', "asl_clip must be a number"),
                       ("label_smoothing=abc", "label_smoothing must be a number"),
                       ("asl_gamma_neg=true", "asl_gamma_neg must be a number, not True"),
                       ("asl_gamma_neg=Infinity", "asl_gamma_neg must be a number, not inf"),
                       ("bs=16.5", "bs must be a whole number"), ("flip_tta=1", "flip_tta must be true or false"),
                       ("lr=true", "lr must be 'auto' or a number"), ("asl_clip=2", "asl_clip must be in")]:
        with pytest.raises(UserError, match=match):
            tr.config_from_args(parser.parse_args(["train", "--set", raw]))
    ok = tr.config_from_args(parser.parse_args(["train", "--set", "wd=null", "--set", "asl_clip=0.1"]))
    assert ok.wd is None and ok.asl_clip == 0.1
