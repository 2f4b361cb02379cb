"""Ingest of everything instaloader writes: its metadata layouts, its files of no post, the
uploader's first comment, and captions edited after their post was ingested (issue #19, 1 and 2).

Inputs are built here after instaloader's own code (instaloader/structures.py: Post.caption,
Post.date_utc, Post.from_iphone_struct, get_json_structure; instaloader/instaloader.py:
save_caption, update_comments, download_title_pic, save_profile_id, resumable_iteration)."""

from __future__ import annotations

import json
import lzma
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from builders import counts, photo_bytes, rows, tags_by_post
from sqlalchemy import update

from instatag import ingest_read, ingest_sources
from instatag.db import get_engine
from instatag.ingest import ingest
from instatag.schema import images, ingest_errors, post_hashtags, posts

STAMP = 1793685698  # 2026-11-03 06:01:38 UTC


def photo(n: int) -> bytes:
    """A small JPEG whose bytes differ for every ``n`` (its width)."""
    return photo_bytes(size=(32 + n, 24))


def write_json(path: Path, node: dict, node_type: str | None = "Post") -> None:
    """A metadata file as instaloader's save_structure_to_file writes it (xz unless it ends .json)."""
    doc = {"node": node, **({"instaloader": {"version": "4.14.1", "node_type": node_type}} if node_type else {})}
    data = json.dumps(doc).encode()
    path.write_bytes(lzma.compress(data) if path.name.endswith(".xz") else data)


def post_row(settings, stem: str) -> dict:
    return next(r for r in rows(settings, posts) if r["post"] == stem)


# --------------------------------------------------------------------------- metadata layouts


def test_caption_date_and_owner_from_every_metadata_layout(settings, tmp_path):
    drop = tmp_path / "drop"
    drop.mkdir()
    iphone = {"pk": "34001", "code": "DAbC1", "media_type": 1, "taken_at": STAMP + 1,
              "caption": {"text": "Apple pie #ApplePie #baking #recipe"}, "user": {"pk": "4242", "username": "cook"}}
    layouts = {
        # instaloader < 4.9: the GraphQL node
        "2026-11-03_06-00-00_UTC": {"shortcode": "G1", "taken_at_timestamp": STAMP, "owner": {"id": "11"},
                                    "edge_media_to_caption": {"edges": [{"node": {"text": "Tart #LemonTart"}}]}},
        # Post.from_iphone_struct (instaloader >= 4.9): caption and date copied into the node
        "2026-11-03_06-00-01_UTC": {"shortcode": "DAbC1", "date": STAMP + 1, "caption": iphone["caption"]["text"],
                                    "owner": {"id": "4242"}, "iphone_struct": iphone},
        # only the iPhone structure holds them
        "2026-11-03_06-00-02_UTC": {"code": "DAbC2", "iphone_struct": {**iphone, "code": "DAbC2",
                                                                       "taken_at": STAMP + 2}},
        # an empty GraphQL caption list falls back to the newer field, as Post.caption does
        "2026-11-03_06-00-03_UTC": {"shortcode": "G3", "edge_media_to_caption": {"edges": []},
                                    "caption": "Soup #soup", "date": STAMP + 3, "owner": {"id": 12}},
    }
    for i, (stem, node) in enumerate(layouts.items()):
        (drop / f"{stem}.jpg").write_bytes(photo(i))
        write_json(drop / f"{stem}.json.xz", node)
    (drop / "2026-11-03_06-00-04_UTC.jpg").write_bytes(photo(60))  # a story, plain JSON
    write_json(drop / "2026-11-03_06-00-04_UTC.json", {"id": "5", "taken_at_timestamp": STAMP + 4,
                                                       "owner": {"id": "13"}, "caption": "Story #bread"},
               node_type="StoryItem")
    report = ingest(settings, [drop])
    assert (report.accepted, report.rejected, report.notes, report.skipped) == (5, {}, {}, {})
    assert tags_by_post(settings) == {
        "2026-11-03_06-00-00_UTC": ["lemontart"], "2026-11-03_06-00-01_UTC": ["applepie", "baking", "recipe"],
        "2026-11-03_06-00-02_UTC": ["applepie", "baking", "recipe"], "2026-11-03_06-00-03_UTC": ["soup"],
        "2026-11-03_06-00-04_UTC": ["bread"]}
    got = {r["post"]: (r["shortcode"], r["owner_id"], r["taken_at"].replace(tzinfo=UTC)) for r in rows(settings, posts)}
    assert got == {
        "2026-11-03_06-00-00_UTC": ("G1", "11", datetime.fromtimestamp(STAMP, UTC)),
        "2026-11-03_06-00-01_UTC": ("DAbC1", "4242", datetime.fromtimestamp(STAMP + 1, UTC)),
        "2026-11-03_06-00-02_UTC": ("DAbC2", "4242", datetime.fromtimestamp(STAMP + 2, UTC)),
        "2026-11-03_06-00-03_UTC": ("G3", "12", datetime.fromtimestamp(STAMP + 3, UTC)),
        "2026-11-03_06-00-04_UTC": (None, "13", datetime.fromtimestamp(STAMP + 4, UTC)),
    }


def test_metadata_without_a_caption_is_reported(sqlite_settings, tmp_path, capsys):
    drop = tmp_path / "drop"
    drop.mkdir()
    for i, node in enumerate([{"shortcode": "N1", "edge_media_to_caption": {"edges": []}},  # no caption written
                              {"shortcode": "N2", "caption": None},
                              {"shortcode": "N3", "some_future_field": {"text": "#lost"}}]):  # a layout not known
        (drop / f"2026-11-03_07-00-0{i}_UTC.jpg").write_bytes(photo(10 + i))
        write_json(drop / f"2026-11-03_07-00-0{i}_UTC.json.xz", node)
    (drop / "2026-11-03_07-00-09_UTC.jpg").write_bytes(photo(61))  # .txt wins over metadata
    (drop / "2026-11-03_07-00-09_UTC.txt").write_text("#fromtxt")
    write_json(drop / "2026-11-03_07-00-09_UTC.json.xz", {"shortcode": "N9"})
    report = ingest(sqlite_settings, [drop])
    assert report.accepted == 4 and report.notes == {"metadata_without_caption": 3}
    assert "metadata_without_caption 3" in report.summary()
    assert sum(r["caption"] is None for r in rows(sqlite_settings, posts)) == 3
    assert tags_by_post(sqlite_settings)["2026-11-03_07-00-09_UTC"] == ["fromtxt"]


# --------------------------------------------------------------------------- files of no post


def instaloader_side_files(root: Path) -> dict[str, str]:
    """A profile folder and a hashtag folder with every file instaloader writes besides posts;
    returns {relative path: SKIPPED kind} of those files."""
    cook, tag = root / "madeup_cook", root / "#recipe"
    cook.mkdir(parents=True)
    tag.mkdir()
    for folder, stem, caption in ((cook, "2026-11-01_09-00-00_UTC", "Chili #chili #recipe"),
                                  (tag, "2026-11-03_08-00-00_UTC", "Beet salad, edited #beetsalad #recipe")):
        (folder / f"{stem}.jpg").write_bytes(photo(len(caption)))
        (folder / f"{stem}.txt").write_text(caption + "\n")
    side = {
        "madeup_cook/2026-10-30_11-00-00_UTC_profile_pic.jpg": photo(62),
        "madeup_cook/2026-10-30_11-00-00_UTC_cover.jpg": photo(63),
        "#recipe/2026-11-02_21-14-05_UTC_profile_pic.jpg": photo(64),
        "#recipe_2026-11-02_21-14-05_UTC_profile_pic.jpg": photo(65),  # no {target} folder
        "#recipe/2026-11-03_08-00-00_UTC_old_01.txt": b"Beet salad #beetsalad #recipe\n",
        "#recipe/2026-11-03_08-00-00_UTC_old_02.txt": b"Beet #beet\n",
        "#recipe/iterator_bq3-_Xy1.json.xz": lzma.compress(b'{"node": {}, "instaloader": '
                                                           b'{"node_type": "FrozenNodeIterator"}}'),
        "#recipe/2026-11-03_08-00-00_UTC_iterator_Ab12_-Q9.json.xz": b"half-written resume file",
        "#recipe/2026-11-03_08-00-00_UTC_location.txt": b"Rome\nhttps://maps.google.com/maps?q=1,2\n",
        "#recipe/2026-11-04_00-00-00_UTC.jpg.temp": b"\xff\xd8 being downloaded",
        "madeup_cook/id": b"4242\n",
        "madeup_cook_id": b"4242\n",  # no {profile} folder
        "2026-11-05_10-00-00_UTC_comments.json": b"[]",  # comments of a post not downloaded
    }
    for name, data in side.items():
        (root / name).write_bytes(data)
    write_json(tag / "#recipe.json.xz", {"name": "recipe", "id": "17843"}, node_type="Hashtag")
    write_json(cook / "madeup_cook_4242.json.xz", {"id": "4242", "username": "madeup_cook"}, node_type="Profile")
    (root / "#dessert").mkdir()
    write_json(root / "#dessert" / "#dessert.json", {"name": "dessert"}, node_type="Hashtag")  # --no-compress-json
    kinds = {name: ingest_sources._side_file(Path(name).name.lower()) for name in side}
    kinds.update({"2026-11-05_10-00-00_UTC_comments.json": "comments", "#recipe/#recipe.json.xz": "not_a_post_metadata",
                  "madeup_cook/madeup_cook_4242.json.xz": "not_a_post_metadata",
                  "#dessert/#dessert.json": "not_a_post_metadata"})
    return kinds


def test_files_of_no_post_are_skipped_and_counted(settings, tmp_path):
    kinds = instaloader_side_files(tmp_path / "scrape")
    assert None not in kinds.values()
    report = ingest(settings, [tmp_path / "scrape"])
    assert (report.accepted, report.rejected) == (2, {})
    assert rows(settings, ingest_errors) == []
    assert sorted(r["post"] for r in rows(settings, posts)) == ["2026-11-01_09-00-00_UTC", "2026-11-03_08-00-00_UTC"]
    expected = {}
    for kind in kinds.values():
        expected[kind] = expected.get(kind, 0) + 1
    assert report.skipped == expected
    assert f"{len(kinds)} instaloader files of no post skipped" in report.summary()
    again = ingest(settings, [tmp_path / "scrape"])  # the hourly run: still no error row, same counts
    assert (again.duplicates, again.rejected, again.skipped) == (2, {}, expected)
    assert rows(settings, ingest_errors) == []


def test_a_post_without_its_photo_is_still_reported(sqlite_settings, tmp_path):
    drop = tmp_path / "drop"
    drop.mkdir()
    write_json(drop / "2026-11-03_09-00-00_UTC.json.xz", {"shortcode": "V1", "caption": "a video #soup"})
    write_json(drop / "2026-11-03_09-00-01_UTC.json.xz", {"shortcode": "V2"}, node_type=None)  # older instaloader
    (drop / "2026-11-03_09-00-02_UTC.json.xz").write_bytes(b"\xfd7zXZ cut short")
    report = ingest(sqlite_settings, [drop])
    assert report.rejected == {"metadata_without_photo": 2, "unreadable_metadata": 1} and report.skipped == {}


# --------------------------------------------------------------------------- the uploader's first comment


def comment(cid: int, at: int, owner: str, text: str, answers=()) -> dict:
    """One entry of instaloader's _comments.json (Instaloader.update_comments)."""
    return {"id": str(cid), "created_at": at, "text": text, "owner": {"id": owner, "username": f"u{owner}"},
            "likes_count": 0, "answers": list(answers)}


def test_hashtags_of_the_owners_first_comment_count_only_when_asked(settings, tmp_path):
    drop = tmp_path / "drop"
    drop.mkdir()
    stem = "2026-11-03_10-00-00_UTC"
    (drop / f"{stem}.jpg").write_bytes(photo(66))
    (drop / f"{stem}.txt").write_text("Sunday roast #roast")
    write_json(drop / f"{stem}.json.xz", {"shortcode": "C1", "owner": {"id": "42"}})
    comments = [  # newest first, as instaloader writes them
        comment(5, STAMP + 900, "42", "and more #late"),
        comment(4, STAMP + 60, "42", "#Gravy #Potatoes #recipe",
                answers=[comment(9, STAMP + 70, "42", "#answer")]),
        comment(3, STAMP + 30, "77", "#spam #followme"),  # a stranger, first of all
    ]
    (drop / f"{stem}_comments.json").write_text(json.dumps(comments))
    # the same photo layout without metadata: the owner is unknown, no comment counts
    (drop / "2026-11-03_10-00-01_UTC.jpg").write_bytes(photo(67))
    (drop / "2026-11-03_10-00-01_UTC.txt").write_text("#stew")
    (drop / "2026-11-03_10-00-01_UTC_comments.json").write_text(json.dumps([comment(1, STAMP, "42", "#x")]))
    # a comments file that cannot be read: the post goes in without comment tags
    (drop / "2026-11-03_10-00-02_UTC.jpg").write_bytes(photo(68))
    (drop / "2026-11-03_10-00-02_UTC.txt").write_text("#pie")
    write_json(drop / "2026-11-03_10-00-02_UTC.json.xz", {"shortcode": "C2", "owner": {"id": "42"}})
    (drop / "2026-11-03_10-00-02_UTC_comments.json").write_text('[{"id": "1", "text": "#cut')

    off = ingest(settings, [drop])
    assert off.accepted == 3 and off.notes == {} and off.skipped == {}
    assert tags_by_post(settings)[stem] == ["roast"]

    on = settings.replace(owner_comment_tags=True, data_dir=tmp_path / "var2")
    with get_engine(settings).begin() as conn:
        conn.execute(posts.delete())
        conn.execute(images.delete())
    report = ingest(on, [drop])
    assert report.accepted == 3 and report.notes == {"unreadable_comments": 1}
    tags = tags_by_post(on)
    assert tags[stem] == ["roast", "gravy", "potatoes", "recipe"]
    assert tags["2026-11-03_10-00-01_UTC"] == ["stew"] and tags["2026-11-03_10-00-02_UTC"] == ["pie"]
    assert next(r for r in rows(on, post_hashtags) if r["tag"] == "recipe")["is_scrape_tag"] is True


# --------------------------------------------------------------------------- edited captions


def edit_like_instaloader(txt: Path, caption: str) -> None:
    """Instaloader.save_caption on an edited caption: the file becomes <stem>_old_01.txt, the new
    caption is written to a new file whose mtime is set to the post's date (the old file's)."""
    st = txt.stat()
    txt.rename(txt.with_name(f"{txt.stem}_old_01.txt"))
    txt.write_text(caption + "\n", encoding="utf-8")
    os.utime(txt, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_an_edited_caption_updates_the_posts_hashtags_and_nothing_else(settings, tmp_path, monkeypatch):
    drop = tmp_path / "drop"
    drop.mkdir()
    for i, caption in enumerate(["Dinner #cake #recipe", "Lunch #soup", "Two photos #tart"]):
        stem = f"2026-11-03_11-00-0{i}_UTC"
        (drop / f"{stem}.txt").write_text(caption + "\n")
        if i == 2:  # a multi-photo post: both photos share the caption
            (drop / f"{stem}_1.jpg").write_bytes(photo(69))
            (drop / f"{stem}_2.jpg").write_bytes(photo(70))
        else:
            (drop / f"{stem}.jpg").write_bytes(photo(71 + i))
    write_json(drop / "2026-11-03_11-00-00_UTC.json.xz", {"shortcode": "E0", "taken_at_timestamp": STAMP,
                                                          "owner": {"id": "7"}})
    # a post whose caption lives only in its metadata
    (drop / "2026-11-03_11-00-05_UTC.jpg").write_bytes(photo(76))
    write_json(drop / "2026-11-03_11-00-05_UTC.json.xz", {"shortcode": "E5", "caption": "#bread"})
    assert ingest(settings, [drop]).accepted == 5
    before_posts = {r["post"]: r for r in rows(settings, posts)}
    before_images = {r["id"]: r for r in rows(settings, images)}

    reads = []
    real = ingest_read.read_caption
    monkeypatch.setattr(ingest_read, "read_caption", lambda path: reads.append(path) or real(path))
    quiet = ingest(settings, [drop])
    assert (quiet.duplicates, quiet.notes, reads) == (5, {}, [])  # nothing changed: no caption read again

    edit_like_instaloader(drop / "2026-11-03_11-00-00_UTC.txt", "Dinner #pies #recipe")  # same size, same mtime
    edit_like_instaloader(drop / "2026-11-03_11-00-02_UTC.txt", "Two photos #tart #Crumble")
    (drop / "2026-11-03_11-00-01_UTC.txt").touch()  # touched, same text: read again, nothing to update
    write_json(drop / "2026-11-03_11-00-05_UTC.json.xz", {"shortcode": "E5", "caption": "#bread #rye"})
    report = ingest(settings, [drop])
    assert (report.accepted, report.reposts, report.duplicates, report.rejected) == (0, 0, 5, {})
    assert report.notes == {"caption_edited": 4}  # 3 posts, one of them with two photos
    assert report.skipped == {"caption_backup": 2}
    tags = tags_by_post(settings)
    assert tags["2026-11-03_11-00-00_UTC"] == ["pies", "recipe"]
    assert tags["2026-11-03_11-00-01_UTC"] == ["soup"]
    assert tags["2026-11-03_11-00-02_UTC_1"] == tags["2026-11-03_11-00-02_UTC_2"] == ["tart", "crumble"]
    assert tags["2026-11-03_11-00-05_UTC"] == ["bread", "rye"]
    assert next(r for r in rows(settings, post_hashtags) if r["tag"] == "recipe")["is_scrape_tag"] is True
    after_posts = {r["post"]: r for r in rows(settings, posts)}
    caption_columns = {"caption", "caption_file_size", "caption_file_mtime_ns", "caption_file_ctime_ns"}
    for stem, before in before_posts.items():
        after = after_posts[stem]
        assert {k: v for k, v in after.items() if k not in caption_columns} == \
               {k: v for k, v in before.items() if k not in caption_columns}, stem
    assert after_posts["2026-11-03_11-00-00_UTC"]["caption"] == "Dinner #pies #recipe\n"
    for image_id, before in before_images.items():
        after = next(r for r in rows(settings, images) if r["id"] == image_id)
        assert {k: v for k, v in after.items() if k != "caption"} == {k: v for k, v in before.items() if k != "caption"}
        assert after["caption"] == next(p["caption"] for p in after_posts.values() if p["source_path"]
                                        == after["source_path"])
    assert counts(settings)["images"] == 5

    reads.clear()
    settled = ingest(settings, [drop])
    assert (settled.notes, reads) == ({}, [])


def test_an_edited_caption_that_cannot_be_read_keeps_the_old_tags_until_fixed(sqlite_settings, tmp_path):
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "2026-11-03_12-00-00_UTC.jpg").write_bytes(photo(73))
    txt = drop / "2026-11-03_12-00-00_UTC.txt"
    txt.write_text("#cake")
    ingest(sqlite_settings, [drop])
    txt.write_bytes(photo_bytes("PNG"))  # binary
    broken = ingest(sqlite_settings, [drop])
    assert broken.rejected == {"unreadable_caption": 1} and broken.notes == {}
    assert tags_by_post(sqlite_settings) == {"2026-11-03_12-00-00_UTC": ["cake"]}
    txt.write_text("#cake #pie")
    fixed = ingest(sqlite_settings, [drop])
    assert fixed.notes == {"caption_edited": 1}
    assert tags_by_post(sqlite_settings) == {"2026-11-03_12-00-00_UTC": ["cake", "pie"]}


def test_posts_ingested_before_caption_files_were_recorded_are_caught_up_quietly(sqlite_settings, tmp_path):
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "2026-11-03_13-00-00_UTC.jpg").write_bytes(photo(74))
    (drop / "2026-11-03_13-00-00_UTC.txt").write_text("#cake")
    ingest(sqlite_settings, [drop])
    with get_engine(sqlite_settings).begin() as conn:  # as the migration leaves posts ingested before it
        conn.execute(update(posts).values(caption_file_size=None, caption_file_mtime_ns=None,
                                          caption_file_ctime_ns=None))
    report = ingest(sqlite_settings, [drop])
    assert report.notes == {}
    assert post_row(sqlite_settings, "2026-11-03_13-00-00_UTC")["caption_file_size"] == 5


def test_the_next_vocabulary_uses_the_edited_hashtags(sqlite_settings, tmp_path):
    from instatag.vocab import build

    groups = tmp_path / "groups.yaml"
    groups.write_text("scrape_tags: [recipe]\nmin_count: 1\ngroups: {}\n")
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "2026-11-03_14-00-00_UTC.jpg").write_bytes(photo(75))
    (drop / "2026-11-03_14-00-00_UTC.txt").write_text("#cake #recipe\n")
    ingest(sqlite_settings, [drop])
    first = build(sqlite_settings, groups, check=False)  # one photo: too few to train on
    edit_like_instaloader(drop / "2026-11-03_14-00-00_UTC.txt", "#soup #recipe")
    ingest(sqlite_settings, [drop])
    second = build(sqlite_settings, groups, check=False)  # one photo: too few to train on
    assert not second.reused and second.version_id != first.version_id
    from instatag.labels import LabelPipeline

    assert LabelPipeline.for_version(sqlite_settings, first.version_id).labels == ["cake"]
    assert LabelPipeline.for_version(sqlite_settings, second.version_id).labels == ["soup"]


@pytest.mark.parametrize("name,kind", [
    ("2026-11-03_08-00-00_UTC.jpg", None), ("2026-11-03_08-00-00_UTC_2.jpg", None),
    ("2026-11-03_08-00-00_UTC.txt", None), ("2026-11-03_08-00-00_UTC.json.xz", None),
    ("2026-11-03_08-00-00_UTC_old_01.txt", "caption_backup"), ("2026-11-03_08-00-00_UTC_old_123.txt", "caption_backup"),
    ("2026-11-03_08-00-00_UTC_profile_pic.jpg", "title_picture"),
    ("2026-11-03_08-00-00_UTC_cover.jpg", "title_picture"),
    ("iterator_AbC-_12x.json.xz", "resume_file"), ("id", "profile_id"), ("made.up_cook_id", "profile_id"),
    ("2026-11-03_08-00-00_UTC_location.txt", "location"), ("2026-11-03_08-00-00_UTC.jpg.temp", "download_in_progress"),
])
def test_side_file_names(name, kind):
    assert ingest_sources._side_file(name.lower()) == kind


def test_owner_comment_tags_setting():
    from instatag.settings import SettingsError, load_settings

    assert load_settings(env={}).owner_comment_tags is False
    assert load_settings(env={"INSTATAG_OWNER_COMMENT_TAGS": "Yes"}).owner_comment_tags is True
    assert load_settings(env={"INSTATAG_OWNER_COMMENT_TAGS": "0"}).owner_comment_tags is False
    with pytest.raises(SettingsError, match="owner_comment_tags"):
        load_settings(env={"INSTATAG_OWNER_COMMENT_TAGS": "maybe"})
