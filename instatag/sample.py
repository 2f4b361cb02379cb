"""A small synthetic scrape in instaloader's layout, for the demo and the tests.

Each made-up dish has its own look (background colour, shape, stripes) and its own
hashtag habits, so a model can learn the tags from the pixels. Like a real scrape,
posts carry the scrape tag (``#recipe``), generic tags and plurals; some have no
usable tag. Deterministic for a given seed.
"""

from __future__ import annotations

import json
import lzma
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path


@dataclass(frozen=True)
class Dish:
    name: str
    colour: tuple[int, int, int]
    shape: str
    tags: tuple[str, ...]


DISHES = (
    Dish("tomato_soup", (200, 40, 30), "circle", ("#soup", "#TomatoSoup", "#soups", "#tomatoes")),
    Dish("green_salad", (60, 170, 60), "stripes", ("#salad", "#salads", "#greens", "#Vegan")),
    Dish("chocolate_cake", (90, 50, 20), "square", ("#cake", "#cakes", "#chocolatecake", "#dessert")),
    Dish("lemon_tart", (240, 220, 60), "triangle", ("#tart", "#LemonTart", "#desserts", "#lemons")),
    Dish("blueberry_pie", (60, 60, 190), "circle", ("#pie", "#pies", "#blueberries", "#baking")),
    Dish("rice_bowl", (235, 235, 225), "ring", ("#rice", "#bowl", "#ricebowl", "#asianfood")),
)
GENERIC = ("#foodie", "#yummy", "#instafood", "#delicious", "#homemade", "#foodporn")
SCRAPE = ("#recipe", "#Recipe", "#recipes")


def draw(dish: Dish, rng: random.Random, size: int = 96):
    """One photo of ``dish``: its colour and shape, jittered, with noise."""
    from PIL import Image, ImageDraw

    jitter = [max(0, min(255, c + rng.randint(-25, 25))) for c in dish.colour]
    bg = tuple(rng.randint(120, 200) for _ in range(3))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    cx, cy, r = rng.randint(35, 60), rng.randint(35, 60), rng.randint(22, 34)
    box = (cx - r, cy - r, cx + r, cy + r)
    if dish.shape == "circle":
        d.ellipse(box, fill=tuple(jitter))
    elif dish.shape == "ring":
        d.ellipse(box, outline=tuple(jitter), width=9)
    elif dish.shape == "square":
        d.rectangle(box, fill=tuple(jitter))
    elif dish.shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=tuple(jitter))
    else:
        for x in range(0, size, 12):
            d.rectangle((x, 0, x + 5, size), fill=tuple(jitter))
    noise = Image.frombytes("RGB", (size, size), rng.randbytes(size * size * 3))  # seeded, unlike effect_noise
    return Image.blend(img, noise, 0.1)


def make_scrape(
    folder: Path,
    n_posts: int = 120,
    seed: int = 0,
    start: datetime = datetime(2026, 11, 1, 6, 0, tzinfo=UTC),
    with_metadata: float = 0.5,
    dishes: tuple[str, ...] | None = None,
    trend: tuple[str, float] | None = None,
) -> list[tuple[str, str]]:
    """Write ``n_posts`` posts into ``folder``; returns (post stem, dish name) pairs.

    ``dishes``: only these dishes (names of ``DISHES``; default all six, the first six posts one of
    each); ``trend``: (hashtag, share): that hashtag on about that share of the posts. Both make the
    shifted drops of drift tests."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    t = start
    menu = DISHES if dishes is None else tuple(d for d in DISHES if d.name in dishes)
    if not menu:
        raise ValueError(f"no dish among {dishes}; the dishes are {', '.join(d.name for d in DISHES)}")
    for i in range(n_posts):
        dish = menu[i % len(menu)] if i < len(menu) else rng.choice(menu)
        t += timedelta(seconds=rng.randint(30, 900))
        stem = t.strftime("%Y-%m-%d_%H-%M-%S_UTC")
        tags = [rng.choice(SCRAPE)]
        if rng.random() > 0.15:  # some posts carry no usable tag
            tags += rng.sample(dish.tags, rng.randint(1, 3))
        tags += rng.sample(GENERIC, rng.randint(0, 2))
        if trend and rng.random() < trend[1]:
            tags.append(trend[0])
        rng.shuffle(tags)
        caption = f"{rng.choice(['So good', 'Dinner tonight', 'Try this'])} . . . " + " ".join(tags)
        draw(dish, rng).save(folder / f"{stem}.jpg", quality=90)
        (folder / f"{stem}.txt").write_text(caption, encoding="utf-8")
        if rng.random() < with_metadata:
            node = {
                "node": {
                    "shortcode": f"S{seed}x{i:05d}",
                    "taken_at_timestamp": int(t.timestamp()),
                    "edge_media_to_caption": {"edges": [{"node": {"text": caption}}]},
                    "owner": {"id": str(1000 + rng.randint(0, 50))},
                }
            }
            (folder / f"{stem}.json.xz").write_bytes(lzma.compress(json.dumps(node).encode()))
        out.append((stem, dish.name))
    return out
