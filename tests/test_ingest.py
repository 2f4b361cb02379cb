"""Ingest: instaloader folders and manifests, dedup, broken files, concurrency (SQLite and PostgreSQL)."""

from __future__ import annotations

import errno
import hashlib
import json
import lzma
import multiprocessing
import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from builders import counts, errors_by_name, huge_png, photo_bytes, rows
from PIL import Image

from instatag import db, imagestore, ingest_read
from instatag import ingest as ingest_mod
from instatag.cli import main
from instatag.errors import UserError
from instatag.hashtags import parse_hashtags
from instatag.imagestore import original_path, resized_path
from instatag.ingest import ingest
from instatag.ingest_read import read_bytes
from instatag.ingest_sources import parse_time
from instatag.sample import make_scrape
from instatag.schema import images, ingest_errors, post_hashtags, posts
from instatag.settings import SettingsError, load_settings

# --------------------------------------------------------------------------- helpers


def broken_drop(folder: Path) -> dict[str, str]:
    """Drop 3's kinds of broken files (and two good posts); returns {file name: expected reason}."""
    folder.mkdir(parents=True, exist_ok=True)
    good = photo_bytes()
    files = {
        "2026-11-03_23-59-01_UTC.jpg": b"",
        "2026-11-03_23-59-02_UTC.jpg": good[: len(good) // 2],
        "2026-11-03_23-59-03_UTC.jpg": b"<html>not an image</html>",
        "2026-11-03_23-59-05_UTC.json.xz": b"not xz at all",
        "2026-11-03_23-59-06_UTC.jpg": huge_png(),
        "2026-11-03_23-59-08_UTC.mp4": b"\x00\x00\x00\x18ftypmp42",
        "2026-11-03_23-59-09_UTC.jpg": photo_bytes(color=(1, 2, 3)),
        "2026-11-03_23-59-09_UTC.txt": photo_bytes("PNG", color=(9, 9, 9)),  # binary: text in no encoding
        "2026-11-03_23-59-10_UTC.jpg": photo_bytes(color=(4, 5, 6)),
        "2026-11-03_23-59-10_UTC.json.xz": lzma.compress(b'{"node": {"shortcode": "x"}}')[:20],
        "2026-11-03_23-59-07_UTC.png": photo_bytes("PNG", "RGBA", color=(10, 200, 10)),
        "2026-11-03_23-59-11_UTC.jpg": good,
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    for stem in ("01", "02", "03", "04", "06", "07", "11"):
        (folder / f"2026-11-03_23-59-{stem}_UTC.txt").write_text(f"post {stem} #recipe #Pie", encoding="utf-8")
    return {  # the broken files of food10's drop 3, plus more kinds
        **FOOD10_BROKEN,
        "2026-11-03_23-59-08_UTC.mp4": "unsupported_format",
        "2026-11-03_23-59-09_UTC.txt": "unreadable_caption",
        "2026-11-03_23-59-10_UTC.json.xz": "unreadable_metadata",
    }


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------- instaloader folders


def test_generated_scrape(settings, tmp_path):
    drop = tmp_path / "drop1"
    made = make_scrape(drop, n_posts=12, seed=1)
    report = ingest(settings, [drop])
    assert (report.accepted, report.reposts, report.duplicates, report.rejected) == (12, 0, 0, {})
    assert counts(settings)["images"] == 12 and counts(settings)["posts"] == 12

    by_post = {r["post"]: r for r in rows(settings, posts)}
    assert set(by_post) == {stem for stem, _ in made}
    tags = {}
    for r in rows(settings, post_hashtags):
        tags.setdefault(r["post_id"], []).append(r)
    for stem, _ in made:
        p = by_post[stem]
        caption = (drop / f"{stem}.txt").read_text(encoding="utf-8")
        assert p["caption"] == caption
        got = sorted(tags.get(p["id"], []), key=lambda r: r["position"])
        assert [r["tag"] for r in got] == parse_hashtags(caption)
        assert all(r["is_scrape_tag"] == (r["tag"] in ("recipe", "recipes")) for r in got)
        assert p["taken_at"].replace(tzinfo=UTC) == datetime.strptime(stem, "%Y-%m-%d_%H-%M-%S_UTC").replace(
            tzinfo=UTC)
        meta = drop / f"{stem}.json.xz"
        assert (p["shortcode"] is not None) == meta.exists()

    data_dir = settings.data_dir
    for img in rows(settings, images):
        assert not Path(img["original_path"]).is_absolute() and not Path(img["resized_path"]).is_absolute()
        assert img["original_path"] == original_path(img["sha256"], "jpg")
        assert img["resized_path"] == resized_path(img["sha256"])
        original = (data_dir / img["original_path"]).read_bytes()
        assert original == Path(img["source_path"]).read_bytes()
        assert os.path.samefile(data_dir / img["original_path"], img["source_path"])  # hard-linked, not copied
        assert hashlib.sha256(original).hexdigest() == img["sha256"]
        small = Image.open(data_dir / img["resized_path"])
        assert small.format == "JPEG" and small.mode == "RGB" and max(small.size) <= settings.resized_side
        assert (img["format"], img["width"], img["height"]) == ("JPEG", 96, 96)
    assert not [p for p in (settings.data_dir / imagestore.STORE).rglob(".*")], "temporary files left in the store"


def test_rerun_and_later_drop_with_a_repost(settings, tmp_path):
    drop1, drop2 = tmp_path / "drop1", tmp_path / "drop2"
    made = make_scrape(drop1, n_posts=8, seed=2)
    make_scrape(drop2, n_posts=3, seed=3, start=datetime(2026, 11, 2, 6, 0, tzinfo=UTC))
    stem = made[0][0]
    shutil.copyfile(drop1 / f"{stem}.jpg", drop2 / "2026-11-02_09-00-00_UTC.jpg")
    (drop2 / "2026-11-02_09-00-00_UTC.txt").write_text("again! #Soup #recipe")

    first = ingest(settings, [drop1])
    before = counts(settings)
    again = ingest(settings, [drop1])
    assert (again.accepted, again.reposts, again.duplicates) == (0, 0, 8)
    assert counts(settings) == before

    later = ingest(settings, [drop1, drop2])
    assert (first.accepted, later.accepted, later.reposts, later.duplicates) == (8, 3, 1, 8)
    assert counts(settings)["images"] == 11 and counts(settings)["posts"] == 12
    by_post = {r["post"]: r for r in rows(settings, posts)}
    assert by_post["2026-11-02_09-00-00_UTC"]["image_id"] == by_post[stem]["image_id"]
    image = next(r for r in rows(settings, images) if r["id"] == by_post[stem]["image_id"])
    assert image["post"] == stem  # the first post that brought it
    repost_tags = {r["tag"] for r in rows(settings, post_hashtags)
                   if r["post_id"] == by_post["2026-11-02_09-00-00_UTC"]["id"]}
    assert repost_tags == {"soup", "recipe"}


def test_broken_files_rejected_with_reasons(settings, tmp_path):
    drop = tmp_path / "drop3"
    expected = broken_drop(drop)
    before = snapshot(drop)
    report = ingest(settings, [drop])
    assert errors_by_name(settings) == expected
    assert report.rejected == {r: list(expected.values()).count(r) for r in set(expected.values())}
    assert (report.accepted, report.reposts) == (2, 0)
    assert {r["post"] for r in rows(settings, posts)} == {"2026-11-03_23-59-07_UTC", "2026-11-03_23-59-11_UTC"}
    png = next(r for r in rows(settings, images) if r["post"] == "2026-11-03_23-59-07_UTC")
    assert png["format"] == "PNG" and png["original_path"].endswith(".png")
    assert Image.open(settings.data_dir / png["resized_path"]).getpixel((3, 3)) == pytest.approx((10, 200, 10), abs=4)
    assert snapshot(drop) == before, "a source file was changed, moved or deleted"
    assert "unreadable_caption 1" in report.summary()

    # a re-run adds no row and refreshes seen_at
    seen = {r["path"]: r["seen_at"] for r in rows(settings, ingest_errors)}
    time.sleep(1.1)
    again = ingest(settings, [drop])
    assert again.rejected == report.rejected and again.accepted == 0 and again.duplicates == 2
    assert len(rows(settings, ingest_errors)) == len(expected)
    assert all(r["seen_at"] > seen[r["path"]] for r in rows(settings, ingest_errors))

    # fixing the caption lets its post in whole
    (drop / "2026-11-03_23-59-09_UTC.txt").write_text("café #café #recipe", encoding="utf-8")
    fixed = ingest(settings, [drop])
    assert fixed.accepted == 1
    post = next(r for r in rows(settings, posts) if r["post"] == "2026-11-03_23-59-09_UTC")
    assert {r["tag"] for r in rows(settings, post_hashtags) if r["post_id"] == post["id"]} == {"café", "recipe"}
    assert "2026-11-03_23-59-09_UTC.txt" not in errors_by_name(settings)  # ingest_errors: what is still wrong

    # an empty photo replaced, the missing photo of a caption added: their error rows go
    (drop / "2026-11-03_23-59-01_UTC.jpg").write_bytes(photo_bytes(color=(50, 60, 70)))
    (drop / "2026-11-03_23-59-04_UTC.jpg").write_bytes(photo_bytes(color=(80, 90, 100)))
    assert {errors_by_name(settings)[n] for n in ("2026-11-03_23-59-01_UTC.jpg", "2026-11-03_23-59-04_UTC.txt")} == {
        "empty_file", "caption_without_photo"}
    assert ingest(settings, [drop]).accepted == 2
    left = errors_by_name(settings)
    assert "2026-11-03_23-59-01_UTC.jpg" not in left and "2026-11-03_23-59-04_UTC.txt" not in left
    assert left["2026-11-03_23-59-10_UTC.json.xz"] == "unreadable_metadata"  # still wrong: still there


def test_originals_copied_when_set_or_when_no_link_can_be_made(sqlite_settings, tmp_path, monkeypatch, caplog):
    drop = tmp_path / "drop1"
    make_scrape(drop, n_posts=3, seed=4)

    def originals(settings):
        return [(settings.data_dir / r["original_path"], Path(r["source_path"])) for r in rows(settings, images)]

    copying = sqlite_settings.replace(store_originals="copy")
    assert ingest(copying, [drop]).accepted == 3
    assert all(o.read_bytes() == s.read_bytes() and not os.path.samefile(o, s) for o, s in originals(copying))

    elsewhere = load_settings(env={}, data_dir=tmp_path / "var2")  # link (the default), across filesystems
    db.upgrade(elsewhere)
    monkeypatch.setattr(os, "link", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EXDEV, "cross-device")))
    with caplog.at_level("INFO", logger="instatag.ingest"):
        assert ingest(elsewhere, [drop]).accepted == 3
    assert all(o.read_bytes() == s.read_bytes() and not os.path.samefile(o, s) for o, s in originals(elsewhere))
    assert "3 originals copied into the store, not hard-linked" in caplog.text
    with pytest.raises(SettingsError, match="INSTATAG_STORE_ORIGINALS must be link or copy"):
        load_settings(env={"INSTATAG_STORE_ORIGINALS": "symlink"})


@pytest.mark.parametrize("size", [0, 1, 65535, 65536, 65537, 300_000])
def test_files_are_read_whole(tmp_path, size):
    path = tmp_path / "f"
    path.write_bytes(os.urandom(size))
    assert read_bytes(str(path), 10**6)[0] == path.read_bytes()


def test_files_whose_size_stat_does_not_tell_are_read_whole():
    status = Path("/proc/self/status")
    if not status.exists() or status.stat().st_size:
        pytest.skip("needs Linux's /proc")
    assert read_bytes(str(status), 10**6)[0].startswith(b"Name:")


def test_size_limits_refuse_before_reading(sqlite_settings, tmp_path, monkeypatch):
    """Photos, captions and metadata over their size limits are rejected, not read whole."""
    monkeypatch.setattr(ingest_read, "MAX_IMAGE_BYTES", 2000)
    monkeypatch.setattr(ingest_read, "MAX_CAPTION_BYTES", 100)
    monkeypatch.setattr(ingest_read, "MAX_METADATA_BYTES", 300)
    drop = tmp_path / "drop"
    drop.mkdir()
    big = photo_bytes(size=(300, 300), quality=100)
    assert len(big) > 2000
    (drop / "2026-11-06_10-00-00_UTC.jpg").write_bytes(big)
    (drop / "2026-11-06_11-00-00_UTC.jpg").write_bytes(photo_bytes(color=(5, 5, 5)))
    (drop / "2026-11-06_11-00-00_UTC.txt").write_text("#long " * 40)
    (drop / "2026-11-06_12-00-00_UTC.jpg").write_bytes(photo_bytes(color=(6, 6, 6)))
    (drop / "2026-11-06_12-00-00_UTC.json").write_text(json.dumps({"node": {"shortcode": "x" * 400}}))
    (drop / "2026-11-06_13-00-00_UTC.jpg").write_bytes(photo_bytes(color=(7, 7, 7)))
    (drop / "2026-11-06_13-00-00_UTC.txt").write_text("#fits " * 10)
    report = ingest(sqlite_settings, [drop])
    assert errors_by_name(sqlite_settings) == {"2026-11-06_10-00-00_UTC.jpg": "file_too_large",
                                               "2026-11-06_11-00-00_UTC.txt": "unreadable_caption",
                                               "2026-11-06_12-00-00_UTC.json": "unreadable_metadata"}
    assert report.accepted == 1
    assert {r["tag"] for r in rows(sqlite_settings, post_hashtags)} == {"fits"}


def test_captions_metadata_and_multi_photo_posts(settings, tmp_path):
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "2026-11-05_10-00-00_UTC_1.jpg").write_bytes(photo_bytes(color=(1, 1, 1)))
    (drop / "2026-11-05_10-00-00_UTC_2.jpg").write_bytes(photo_bytes(color=(2, 2, 2)))
    (drop / "2026-11-05_10-00-00_UTC.txt").write_text("two photos #Cake#pie")
    # no .txt: the caption comes from the metadata; UTF-16 caption with a BOM is read
    (drop / "2026-11-05_11-00-00_UTC.jpg").write_bytes(photo_bytes(color=(3, 3, 3)))
    node = {"node": {"shortcode": "Cx1", "taken_at_timestamp": 1793800000, "owner": {"id": 42},
                     "edge_media_to_caption": {"edges": [{"node": {"text": "from json #Tart \ud800"}}]}}}
    (drop / "2026-11-05_11-00-00_UTC.json.xz").write_bytes(lzma.compress(json.dumps(node).encode()))
    (drop / "2026-11-05_12-00-00_UTC.webp").write_bytes(photo_bytes("WEBP", color=(4, 4, 4)))
    (drop / "2026-11-05_12-00-00_UTC.txt").write_bytes("#Brötchen".encode("utf-16"))
    (drop / ".hidden.jpg").write_bytes(b"ignored")
    report = ingest(settings, [drop])
    assert (report.accepted, report.rejected) == (4, {})
    by_post = {r["post"]: r for r in rows(settings, posts)}
    assert by_post["2026-11-05_10-00-00_UTC_2"]["caption"] == "two photos #Cake#pie"
    meta_post = by_post["2026-11-05_11-00-00_UTC"]
    assert (meta_post["shortcode"], meta_post["owner_id"]) == ("Cx1", "42")
    assert meta_post["caption"] == "from json #Tart ?"
    assert meta_post["taken_at"].replace(tzinfo=UTC) == datetime.fromtimestamp(1793800000, UTC)
    tags = {(r["post_id"], r["tag"]) for r in rows(settings, post_hashtags)}
    assert (meta_post["id"], "tart") in tags
    assert (by_post["2026-11-05_12-00-00_UTC"]["id"], "brötchen") in tags
    assert {t for pid, t in tags if pid == by_post["2026-11-05_10-00-00_UTC_1"]["id"]} == {"cake", "pie"}


def test_instaloader_side_files_and_downloads_in_progress_are_ignored(sqlite_settings, tmp_path):
    drop = tmp_path / "drop"
    (stem, _), = make_scrape(drop, n_posts=1, seed=5)
    (drop / f"{stem}_comments.json").write_text("[]")
    (drop / f"{stem}_location.txt").write_text("Rome")
    (drop / "2026-11-01_23-00-00_UTC.jpg.temp").write_bytes(photo_bytes()[:100])  # being downloaded
    (drop / "2026-11-01_23-00-00_UTC.txt").write_text("soon #soup")
    (drop / "clip.mp4").write_bytes(b"\0" * 10)
    report = ingest(sqlite_settings, [drop])
    assert (report.accepted, report.rejected) == (1, {"caption_without_photo": 1, "unsupported_format": 1})
    assert errors_by_name(sqlite_settings) == {"2026-11-01_23-00-00_UTC.txt": "caption_without_photo",
                                               "clip.mp4": "unsupported_format"}


def test_folders_symlinks_and_unreadable_folders(settings, tmp_path, monkeypatch):
    drop = tmp_path / "drop"
    make_scrape(drop / "a", n_posts=2, seed=4)
    make_scrape(drop / "locked", n_posts=2, seed=5)
    (drop / "a" / "loop").symlink_to(drop)  # leads back to a folder above
    (drop / "self.jpg").symlink_to(drop / "self.jpg")
    (drop / "gone.jpg").symlink_to(drop / "nowhere.jpg")
    (drop / "alias").symlink_to(drop / "a")  # the same folder twice: ingested once, not an error
    real_scandir = os.scandir

    def scandir(path="."):
        if str(path).endswith("locked"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    report = ingest(settings, [drop, drop / "a"])  # overlapping sources
    assert report.accepted == 2 and report.duplicates == 0
    assert errors_by_name(settings) == {"loop": "symlink_loop", "self.jpg": "symlink_loop",
                                        "gone.jpg": "dangling_symlink", "locked": "unreadable_folder"}


def test_the_same_drop_by_another_path_is_the_same_posts(sqlite_settings, tmp_path, monkeypatch):
    """A post's identity is its real file path: a link to the drop, or a path through one, adds nothing."""
    real = tmp_path / "data" / "drop"
    stem = make_scrape(real, n_posts=4, seed=6)[0][0]
    (tmp_path / "data" / "posts.csv").write_text(f"image,tags\ndrop/{stem}.jpg,cake\n", encoding="utf-8")
    (tmp_path / "linked").symlink_to(tmp_path / "data")
    (tmp_path / "work").mkdir()
    assert ingest(sqlite_settings, [real]).accepted == 4
    monkeypatch.chdir(tmp_path / "work")
    again = ingest(sqlite_settings, [Path("../linked/drop"), Path("../linked/posts.csv")])
    assert (again.accepted, again.reposts, again.duplicates) == (0, 0, 4)
    assert {r["source_path"] for r in rows(sqlite_settings, posts)} == {
        str(p) for p in real.resolve().glob("*.jpg")}


# --------------------------------------------------------------------------- manifests


def test_manifests_csv_and_jsonl(settings, tmp_path):
    folder = tmp_path / "other-scraper"
    (folder / "img").mkdir(parents=True)
    for i in range(4):
        (folder / "img" / f"p{i}.png").write_bytes(photo_bytes("PNG", color=(i * 40, 10, 10)))
    (folder / "posts.csv").write_text(
        "image,caption,tags,post,taken_at,likes\n"
        "img/p0.png,Lunch #Soup,,A1,2026-11-01T10:00:00Z,3\n"
        'img/p1.png,,"#Cake, pie  tart",,1793800000,4\n'
        "img/missing.png,x,,,,\n"
        "img/p2.png,,,,not a time,\n", encoding="utf-8")
    (folder / "posts.jsonl").write_text(
        json.dumps({"image": str(folder / "img" / "p3.png"), "tags": ["#Pie", "Crumble"], "post": "J3",
                    "caption": "with #recipe"}) + "\n\n"
        + "{broken json\n"
        + json.dumps({"caption": "no image"}) + "\n"
        + json.dumps({"image": "img/p0.png", "caption": "#again"}) + "\n", encoding="utf-8")
    report = ingest(settings, [folder / "posts.csv", folder / "posts.jsonl"])
    assert (report.accepted, report.reposts, report.duplicates) == (3, 0, 0)  # p0 named twice: once
    assert report.rejected == {"missing_file": 1, "bad_manifest_row": 3}
    errors = {r["path"]: r["reason"] for r in rows(settings, ingest_errors)}
    assert errors[str(folder / "img" / "missing.png")] == "missing_file"
    assert errors[f"{folder / 'posts.csv'}:5"] == "bad_manifest_row"
    assert {f"{folder / 'posts.jsonl'}:{n}" for n in (3, 4)} <= set(errors)
    by_post = {r["post"]: r for r in rows(settings, posts)}
    assert set(by_post) == {"A1", "p1", "J3"}
    assert by_post["A1"]["taken_at"].replace(tzinfo=UTC) == datetime(2026, 11, 1, 10, tzinfo=UTC)
    tags = {}
    for r in sorted(rows(settings, post_hashtags), key=lambda r: r["position"]):
        tags.setdefault(r["post_id"], []).append((r["tag"], r["is_scrape_tag"]))
    assert tags[by_post["A1"]["id"]] == [("soup", False)]
    assert tags[by_post["p1"]["id"]] == [("cake", False), ("pie", False), ("tart", False)]
    assert tags[by_post["J3"]["id"]] == [("recipe", True), ("pie", False), ("crumble", False)]


def test_bad_arguments_are_user_errors(settings, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("path,caption\nx.jpg,hi\n")
    with pytest.raises(UserError, match="'image' column"):
        ingest(settings, [bad])
    with pytest.raises(UserError, match="no such folder"):
        ingest(settings, [tmp_path / "nope"])
    (tmp_path / "x.jpg").write_bytes(b"")
    with pytest.raises(UserError, match="a folder or a .csv"):
        ingest(settings, [tmp_path / "x.jpg"])
    with pytest.raises(UserError, match="INSTATAG_DROP_DIRS"):
        ingest(settings.replace(drop_dirs=()), [])


def test_parse_time():
    assert parse_time("2026-11-01T10:00:00") == datetime(2026, 11, 1, 10, tzinfo=UTC)
    assert parse_time("2026-11-01T10:00:00+02:00").utcoffset().total_seconds() == 7200
    assert parse_time(0) == datetime(1970, 1, 1, tzinfo=UTC) and parse_time("12.5").second == 12
    assert parse_time("") is None and parse_time(None) is None
    with pytest.raises(ValueError):
        parse_time("yesterday")


# --------------------------------------------------------------------------- CLI, pool, concurrency


def test_cli(sqlite_settings, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("INSTATAG_DROP_DIRS", raising=False)
    drop = tmp_path / "drop"
    make_scrape(drop, n_posts=3, seed=6)
    base = ["--database-url", sqlite_settings.database_url, "--data-dir", str(sqlite_settings.data_dir)]
    assert main(base + ["ingest", str(drop)]) == 0
    assert "3 new images" in capsys.readouterr().out
    assert main(base + ["ingest", "--json", str(drop)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["duplicates"] == 3
    monkeypatch.setenv("INSTATAG_DROP_DIRS", str(drop))
    assert main(base + ["ingest", "--workers", "1"]) == 0
    assert "3 already ingested" in capsys.readouterr().out
    assert main(base + ["ingest", str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["ingest", "--help"])
    assert exc.value.code == 0 and "manifest" in capsys.readouterr().out


@pytest.mark.slow
def test_process_pool_gives_the_same_rows(sqlite_settings, tmp_path, monkeypatch):
    drop = tmp_path / "drop"
    make_scrape(drop, n_posts=16, seed=7)
    broken_drop(drop)
    monkeypatch.setattr(ingest_mod, "PARALLEL_MIN", 0)
    monkeypatch.setattr(ingest_mod, "BATCH", 5)
    report = ingest(sqlite_settings, [drop], workers=2)
    assert report.accepted == 18 and sum(report.rejected.values()) == 9
    assert counts(sqlite_settings)["posts"] == 18


def _ingest_in_child(settings, sources, barrier, queue, batch):
    ingest_mod.BATCH = batch
    barrier.wait()
    queue.put(ingest(settings, sources, workers=1).as_dict())


def ingest_twice_at_once(settings, sources, batch) -> list[dict]:
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_ingest_in_child, args=(settings, sources, barrier, queue, batch)) for _ in range(2)]
    for p in procs:
        p.start()
    reports = [queue.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    return reports


@pytest.mark.slow
def test_concurrent_ingests_create_no_duplicates(settings, tmp_path):
    drop = tmp_path / "drop"
    make_scrape(drop, n_posts=30, seed=8)
    shutil.copyfile(next(drop.glob("*.jpg")), drop / "2027-01-01_00-00-00_UTC.jpg")  # a re-post too
    broken_drop(drop)
    reports = ingest_twice_at_once(settings, [drop], batch=4)
    assert sum(r["accepted"] for r in reports) == 32
    assert sum(r["reposts"] for r in reports) == 1
    assert sum(r["duplicates"] for r in reports) == 33
    c = counts(settings)
    assert (c["images"], c["posts"], c["ingest_errors"]) == (32, 33, 9)
    tags = [(r["post_id"], r["tag"]) for r in rows(settings, post_hashtags)]
    assert len(tags) == len(set(tags))
    assert all(r["post_id"] in {p["id"] for p in rows(settings, posts)} for r in rows(settings, post_hashtags))


# --------------------------------------------------------------------------- the food10 scrape

FOOD10_BROKEN = {
    "2026-11-03_23-59-01_UTC.jpg": "empty_file",
    "2026-11-03_23-59-02_UTC.jpg": "truncated_image",
    "2026-11-03_23-59-03_UTC.jpg": "not_an_image",
    "2026-11-03_23-59-04_UTC.txt": "caption_without_photo",
    "2026-11-03_23-59-05_UTC.json.xz": "unreadable_metadata",
    "2026-11-03_23-59-06_UTC.jpg": "too_many_pixels",
}


def food10_expected(drops: list[Path]) -> tuple[set[str], int]:
    """(sha256 of the valid photos, number of valid photo files), computed without the ingest."""
    shas, n = set(), 0
    for d in drops:
        for p in d.iterdir():
            if p.suffix in (".jpg", ".png") and p.name not in FOOD10_BROKEN:
                shas.add(hashlib.sha256(p.read_bytes()).hexdigest())
                n += 1
    return shas, n


@pytest.mark.food10
@pytest.mark.slow
def test_food10_three_drops(settings, food10):
    drops = sorted(food10.glob("drop-*"))
    shas, n_posts = food10_expected(drops)
    report = ingest(settings, drops)
    assert report.accepted == len(shas) and report.accepted + report.reposts == n_posts
    assert {r["sha256"] for r in rows(settings, images)} == shas
    assert errors_by_name(settings) == FOOD10_BROKEN
    assert report.rejected == {reason: 1 for reason in FOOD10_BROKEN.values()}
    png = [r for r in rows(settings, posts) if r["source_path"].endswith("2026-11-03_23-59-07_UTC.png")]
    assert len(png) == 1
    before = counts(settings)
    again = ingest(settings, drops)
    assert (again.accepted, again.reposts, again.duplicates) == (0, 0, n_posts)
    assert counts(settings) == before


@pytest.mark.food10
@pytest.mark.slow
def test_food10_same_drop_twice_at_once(settings, food10):
    drop = food10 / "drop-2026-11-03"
    shas, n_posts = food10_expected([drop])
    reports = ingest_twice_at_once(settings, [drop], batch=100)
    assert sum(r["accepted"] for r in reports) == len(shas)
    c = counts(settings)
    assert (c["images"], c["posts"], c["ingest_errors"]) == (len(shas), n_posts, len(FOOD10_BROKEN))


def test_worker_count():
    from instatag.settings import load_settings

    s = load_settings(env={}, ingest_workers=3)
    assert ingest_mod._workers(s, None, 10) == 1  # a small run decodes in process
    assert ingest_mod._workers(s, None, 1000) == 3
    assert ingest_mod._workers(s, 2, 1000) == 2
