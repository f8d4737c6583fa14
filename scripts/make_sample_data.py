"""Regenerate the sample data: source images in `data/images/` and the catalog `data/catalog/catalog.parquet`.

    .venv/bin/python scripts/make_sample_data.py            # writes under ./data
    .venv/bin/python scripts/make_sample_data.py --out /tmp/data

The output is deterministic (drawn with Pillow, no randomness). The catalog has a dozen rows over 2026-11-20,
2026-11-21 and 2026-11-22 with mixed resolutions, aspect ratios and durations (mostly 4 s so the demo is fast),
image paths relative to the catalog folder (`../images/<name>.png`: the parent of a directory catalog is an
allowed image root), and ONE deliberately bad row (duration 5) that the pipeline rejects with a reason.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
DAYS = [dt.date(2026, 11, 20), dt.date(2026, 11, 21), dt.date(2026, 11, 22)]
SCHEMA = pa.schema([
    ("item_id", pa.string()), ("prompt", pa.string()), ("image_uri", pa.string()),
    ("scheduled_date", pa.date32()), ("resolution", pa.string()), ("aspect_ratio", pa.string()),
    ("duration", pa.int64()),
])


def _gradient(size: tuple[int, int], top: tuple[int, int, int], bottom: tuple[int, int, int]) -> Image.Image:
    w, h = size
    img = Image.new("RGB", size)
    draw = ImageDraw.Draw(img)
    for y in range(h):
        t = y / max(h - 1, 1)
        draw.line([(0, y), (w, y)], fill=tuple(round(a + (b - a) * t) for a, b in zip(top, bottom)))
    return img


def sunrise() -> Image.Image:  # landscape 320x180
    img = _gradient((320, 180), (255, 140, 60), (60, 20, 90))
    d = ImageDraw.Draw(img)
    d.ellipse([130, 70, 190, 130], fill=(255, 220, 120))
    d.polygon([(0, 180), (0, 120), (90, 95), (170, 130), (260, 100), (320, 125), (320, 180)], fill=(30, 40, 35))
    return img


def ocean() -> Image.Image:  # landscape 320x180
    img = _gradient((320, 180), (120, 190, 240), (10, 60, 120))
    d = ImageDraw.Draw(img)
    for i, y in enumerate(range(95, 180, 14)):
        for x in range(-20, 340, 40):
            d.arc([x + (i % 2) * 20, y, x + 40 + (i % 2) * 20, y + 16], 180, 360, fill=(230, 245, 255), width=2)
    d.polygon([(210, 95), (250, 40), (256, 95)], fill=(245, 245, 245))  # a sail
    return img


def city() -> Image.Image:  # portrait 180x320
    img = _gradient((180, 320), (20, 20, 60), (90, 60, 120))
    d = ImageDraw.Draw(img)
    for i, (x, w, h) in enumerate([(5, 40, 170), (50, 35, 230), (90, 45, 140), (140, 35, 200)]):
        d.rectangle([x, 320 - h, x + w, 320], fill=(35 + 10 * i, 35, 55))
        for wy in range(320 - h + 10, 310, 18):
            for wx in range(x + 6, x + w - 6, 10):
                if (wx * 7 + wy * 3 + i) % 5:
                    d.rectangle([wx, wy, wx + 4, wy + 7], fill=(250, 220, 120))
    d.ellipse([130, 30, 160, 60], fill=(240, 240, 220))
    return img


def forest() -> Image.Image:  # portrait 180x320
    img = _gradient((180, 320), (200, 230, 210), (40, 90, 60))
    d = ImageDraw.Draw(img)
    for i, x in enumerate(range(-10, 200, 32)):
        base = 300 - (i % 3) * 25
        d.polygon([(x, base), (x + 20, base - 140 + (i % 2) * 30), (x + 40, base)], fill=(20, 70 + 12 * (i % 3), 40))
        d.rectangle([x + 17, base, x + 23, base + 20], fill=(80, 50, 30))
    return img


IMAGES = {"sunrise": sunrise, "ocean": ocean, "city": city, "forest": forest}

ROWS = [  # item_id, day index, image, prompt, resolution, aspect_ratio, duration
    ("sunrise-hills", 0, "sunrise", "The sun rises slowly over the hills, mist drifting in the valley",
     "720p", "16:9", 4),
    ("ocean-sail", 0, "ocean", "A small sailboat glides across gentle waves, camera pans left", None, None, 4),
    ("city-night", 0, "city", "Windows flicker on one by one as night falls over the city", "auto", "9:16", 4),
    ("forest-breeze", 0, "forest", "A breeze sways the pine trees, birds fly across the frame", "1080p", "9:16", 8),
    ("ocean-storm", 1, "ocean", "Clouds gather and the waves grow taller, a storm approaches", "1080p", "16:9", 4),
    ("sunrise-timelapse", 1, "sunrise", "Time-lapse of the sun climbing into a clear sky", None, "16:9", 4),
    ("city-rain", 1, "city", "Rain starts falling, reflections shimmer on the wet street", "720p", None, 4),
    ("forest-bad-duration", 1, "forest", "Fog rolls between the trees", "720p", "9:16", 5),  # rejected: 5 s
    ("forest-snow", 2, "forest", "Snow begins to fall softly on the pine forest", "auto", "auto", 4),
    ("city-dawn", 2, "city", "Dawn light spreads across the skyline, lights switch off", "720p", "9:16", 12),
    ("ocean-dolphins", 2, "ocean", "Dolphins leap out of the water beside the boat", "720p", "16:9", 4),
    ("sunrise-birds", 2, "sunrise", "A flock of birds crosses the rising sun", None, None, 4),
]


def make(out: Path) -> tuple[list[Path], Path]:
    images_dir, catalog_dir = out / "images", out / "catalog"
    images_dir.mkdir(parents=True, exist_ok=True)
    catalog_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in IMAGES.items():
        path = images_dir / f"{name}.png"
        draw().save(path, format="PNG", optimize=True)
        written.append(path)
    rows = [{"item_id": item_id, "prompt": prompt, "image_uri": f"../images/{image}.png",
             "scheduled_date": DAYS[day], "resolution": res, "aspect_ratio": aspect, "duration": duration}
            for item_id, day, image, prompt, res, aspect, duration in ROWS]
    catalog = catalog_dir / "catalog.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), catalog)
    return written, catalog


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "data", help="data folder (default: ./data)")
    args = parser.parse_args()
    images, catalog = make(args.out)
    for path in [*images, catalog]:
        print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
