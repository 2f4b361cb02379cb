"""Nothing accepted silently wrong, nothing lost for a side file (issue #19, 5): tag lists in
manifest cells, captions in legacy encodings, JPEGs that lack only their end marker."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest
from builders import errors_by_name, photo_bytes, rows, tags_by_post
from PIL import Image

from instatag import ingest as ingest_mod
from instatag import ingest_read, ingest_sources
from instatag.imagestore import Rejected, store_image
from instatag.ingest import ingest
from instatag.ingest_read import decode_caption
from instatag.ingest_sources import tag_cell
from instatag.schema import ingest_errors, posts

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- manifest cells that hold a list


def test_manifest_cells_holding_a_list(settings, tmp_path):
    (tmp_path / "img").mkdir()
    cells = {  # post: tags cell as other tools write a list column
        "L1": "['cake', 'pie']",  # pandas / str(list)
        "L2": '["cake", "pie"]',  # JSON
        "L3": "cake, pie",  # the control row
        "L4": "('cake',)",  # a tuple
        "L5": "  [ '#Cake' ,\"pie\" ] ",
        "L6": "('cake')",  # a parenthesised string
        "L7": "cake 2026",  # a numeric tag is dropped, as Instagram does
        "B1": "[cake, pie",  # looks like a list, is none
        "B2": "'cake', 'pie'",  # quoted entries without brackets
        "B3": "[['cake']]",  # a list in a list
        "B4": "{'cake': 1}",  # not a list, not tags either
        "B5": "[]cake",
    }
    lines = ["image,tags,post"]
    for i, (post, cell) in enumerate(cells.items()):
        (tmp_path / "img" / f"p{i}.jpg").write_bytes(photo_bytes(size=(20 + i, 20)))
        lines.append(f"img/p{i}.jpg,\"{cell.replace(chr(34), chr(34) * 2)}\",{post}")
    (tmp_path / "posts.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "posts.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"image": "img/p0.jpg", "tags": "['cake', 'pie']", "post": "J1"},  # a list written into a JSON string
        {"image": str(tmp_path / "img" / "p1.jpg"), "tags": ["cake", "[pie"], "post": "J2"},
    ]) + "\n")
    report = ingest(settings, [tmp_path / "posts.csv", tmp_path / "posts.jsonl"])
    tags = tags_by_post(settings)
    assert {p: tags[p] for p in tags if p.startswith("L")} == {
        "L1": ["cake", "pie"], "L2": ["cake", "pie"], "L3": ["cake", "pie"], "L4": ["cake"],
        "L5": ["cake", "pie"], "L6": ["cake"], "L7": ["cake"]}
    assert not [p for p in tags if p.startswith(("B", "J2"))]
    assert report.rejected == {"bad_manifest_row": 6}
    bad = {r["path"].rsplit(":", 1)[1]: r["detail"] for r in rows(settings, ingest_errors)}
    assert set(bad) == {"9", "10", "11", "12", "13", "2"}  # CSV lines of B1..B5, JSONL line 2
    assert "[pie" in bad["2"] and "not a hashtag" in bad["2"]
    assert "[cake, pie" in bad["9"]
    # p0 is named by the CSV (L1) and the JSONL (J1): the first mention wins, as for any photo
    assert "J1" not in tags


@pytest.mark.parametrize("cell,expected", [
    ("", []), ("  ", []), ("a b,c", ["a", "b", "c"]), ("[1, 'x']", [1, "x"]), ('["a"]', ["a"]),
    ("('a', 'b')", ["a", "b"]), ("a;b|c, ,d", ["a", "b", "c", "d"]),
])
def test_tag_cell(cell, expected):
    assert tag_cell(cell) == expected


@pytest.mark.parametrize("cell", ["[a", "(1, 2", "[__import__('os')]", "[" * 2000 + "]" * 2000, "('a' 'b' +)",
                                  "['a' 'b']", "np.array(['a'])"])
def test_tag_cells_that_are_no_list_are_refused(cell):
    with pytest.raises(ValueError):
        tag_cell(cell)


def test_tag_cells_are_split_or_refused_never_cut(settings, tmp_path):
    """Issue #19.5: each tag entry is one whole hashtag, else the row is a bad_manifest_row naming it."""
    (tmp_path / "img").mkdir()
    cells = {
        "S1": "cake;pie", "S2": "cake|pie", "S3": "#cake ; #pie |tart,", "S4": "[\"cake\", \"pie\"]",
        "B1": "cake/pie", "B2": "['ice cream']", "B3": '["cake pie"]', "B4": '["cake" "pie"]',
        "B5": "['']", "B6": "np.array(['cake'])", "B7": "['cake!']",
    }
    lines = ["image,tags,post"]
    for i, (post, cell) in enumerate(cells.items()):
        (tmp_path / "img" / f"p{i}.jpg").write_bytes(photo_bytes(size=(20 + i, 20)))
        lines.append(f"img/p{i}.jpg,\"{cell.replace(chr(34), chr(34) * 2)}\",{post}")
    (tmp_path / "posts.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "posts.jsonl").write_text(json.dumps({"image": "img/p0.jpg", "tags": ["cake pie"], "post": "J1"})
                                          + "\n")
    report = ingest(settings, [tmp_path / "posts.jsonl", tmp_path / "posts.csv"])
    tags = tags_by_post(settings)
    assert {p: tags[p] for p in tags} == {"S1": ["cake", "pie"], "S2": ["cake", "pie"],
                                          "S3": ["cake", "pie", "tart"], "S4": ["cake", "pie"]}
    assert report.rejected == {"bad_manifest_row": 8}
    bad = {r["path"].rsplit("/", 1)[1]: r["detail"] for r in rows(settings, ingest_errors)}
    assert "'cake pie'" in bad["posts.jsonl:1"]
    for line, named in [(6, "cake/pie"), (7, "ice cream"), (8, "cake pie"), (9, "side by side"), (10, "''"),
                        (11, "look like code"), (12, "cake!")]:
        assert named in bad[f"posts.csv:{line}"], (line, bad[f"posts.csv:{line}"])


# --------------------------------------------------------------------------- captions in legacy encodings


@pytest.mark.parametrize("text,encoding,expected", [
    ("crème brûlée #crèmebrûlée #recipe", "cp1252", "cp1252"),
    ("crème brûlée #crèmebrûlée #recipe", "latin-1", "cp1252"),
    ("Über lecker: Käsespätzle #käsespätzle", "cp1252", "cp1252"),
    ("naïve café — “best” €5 #café", "cp1252", "cp1252"),
    ("Receita de pão de queijo, fácil e rápida! #pãodequeijo", "latin-1", "cp1252"),
    ("Домашний борщ #борщ #рецепт", "cp1251", "cp1251"),
    ("Σπιτικός μουσακάς #μουσακάς", "cp1253", "cp1253"),
    ("ホームメイドのラーメン #ラーメン #レシピ", "cp932", "cp932"),
])
def test_legacy_encodings_are_detected(text, encoding, expected):
    assert decode_caption(text.encode(encoding)) == (text, expected)


def test_utf8_and_utf16_are_no_fallback():
    assert decode_caption("crème #brûlée".encode()) == ("crème #brûlée", None)
    assert decode_caption("\ufeffcrème".encode()) == ("crème", None)
    assert decode_caption("crème".encode("utf-16")) == ("crème", None)


@pytest.mark.parametrize("data", [photo_bytes("PNG"), photo_bytes(), bytes(range(256)), "café".encode("utf-16-le"),
                                  random.Random(1).randbytes(300)])
def test_binary_captions_stay_unreadable(data):
    with pytest.raises(ingest_read.Unreadable):
        decode_caption(data)


def test_a_caption_saved_in_a_legacy_encoding_keeps_its_post(settings, tmp_path):
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "2026-11-04_09-00-00_UTC.jpg").write_bytes(photo_bytes(size=(30, 20)))
    (drop / "2026-11-04_09-00-00_UTC.txt").write_bytes("Crème brûlée maison #CrèmeBrûlée #recipe".encode("cp1252"))
    (drop / "2026-11-04_09-00-01_UTC.jpg").write_bytes(photo_bytes(size=(31, 20)))
    (drop / "2026-11-04_09-00-01_UTC.txt").write_text("Crème brûlée #crèmebrûlée", encoding="utf-8")
    (drop / "2026-11-04_09-00-02_UTC.jpg").write_bytes(photo_bytes(size=(32, 20)))
    (drop / "2026-11-04_09-00-02_UTC.txt").write_bytes(photo_bytes("PNG"))  # binary: the post waits for a fix
    report = ingest(settings, [drop])
    assert report.accepted == 2 and report.rejected == {"unreadable_caption": 1}
    assert report.notes == {"caption_encoding_fallback": 1}
    assert "caption_encoding_fallback 1" in report.summary()
    by_post = {r["post"]: r for r in rows(settings, posts)}
    legacy, utf8 = by_post["2026-11-04_09-00-00_UTC"], by_post["2026-11-04_09-00-01_UTC"]
    assert (legacy["caption"], legacy["caption_encoding"]) == ("Crème brûlée maison #CrèmeBrûlée #recipe", "cp1252")
    assert utf8["caption_encoding"] is None
    tags = tags_by_post(settings)
    assert tags["2026-11-04_09-00-00_UTC"] == ["crèmebrûlée", "recipe"]
    assert tags["2026-11-04_09-00-01_UTC"] == ["crèmebrûlée"]
    assert errors_by_name(settings) == {"2026-11-04_09-00-02_UTC.txt": "unreadable_caption"}


# --------------------------------------------------------------------------- JPEGs without their end marker


def jpeg(progressive: bool, seed: int = 3) -> bytes:
    """A 120 × 90 JPEG with detail in every block (so that any missing data changes pixels)."""
    rnd = random.Random(seed)
    im = Image.new("RGB", (120, 90))
    im.putdata([(rnd.randrange(256), rnd.randrange(256), (x * 2) % 256) for x in range(120 * 90)])
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=85, progressive=progressive)
    assert buf.getvalue().endswith(b"\xff\xd9")
    return buf.getvalue()


@pytest.mark.parametrize("progressive", [False, True])
def test_a_jpeg_missing_only_its_end_marker_is_accepted(tmp_path, progressive):
    whole = jpeg(progressive)
    full = store_image(whole, tmp_path, 160, 10**8)
    cut = store_image(whole[:-2], tmp_path, 160, 10**8)
    assert cut.sha256 != full.sha256 and (cut.width, cut.height) == (120, 90)
    assert (tmp_path / cut.original_path).read_bytes() == whole[:-2]  # the original is kept byte for byte
    a, b = (Image.open(tmp_path / s.resized_path) for s in (full, cut))
    assert a.tobytes() == b.tobytes()  # every pixel from the photo's own data


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("missing", [3, 4, 10, 100, 1000])
def test_a_really_truncated_jpeg_is_still_rejected(tmp_path, progressive, missing):
    data = jpeg(progressive)
    with pytest.raises(Rejected) as exc:
        store_image(data[:-missing], tmp_path, 160, 10**8)
    assert exc.value.reason == "truncated_image"


def test_ingest_accepts_a_jpeg_without_end_marker(sqlite_settings, tmp_path):
    drop = tmp_path / "drop"
    drop.mkdir()
    data = jpeg(False, seed=5)
    (drop / "2026-11-04_10-00-00_UTC.jpg").write_bytes(data[:-2])
    (drop / "2026-11-04_10-00-00_UTC.txt").write_text("#bread")
    (drop / "2026-11-04_10-00-01_UTC.jpg").write_bytes(data[: len(data) // 2])
    report = ingest(sqlite_settings, [drop])
    assert report.accepted == 1 and report.rejected == {"truncated_image": 1}
    assert tags_by_post(sqlite_settings) == {"2026-11-04_10-00-00_UTC": ["bread"]}


# --------------------------------------------------------------------------- the docs


def test_docs_list_every_reason_skipped_kind_and_note():
    doc = (ROOT / "docs" / "ingest.md").read_text()
    for key in [*ingest_mod.REASONS, *ingest_sources.SKIPPED, *ingest_read.NOTES]:
        assert f"`{key}`" in doc, key
