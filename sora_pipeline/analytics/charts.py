"""PNG charts of the statistics (the daily one with Pillow, the summary with matplotlib's Agg backend), and Markdown
that embeds them for the Dagster UI.

The Dagster UI renders `MetadataValue.md` with images whose `src` is a `data:` URI, so a chart is attached as
`![chart](data:image/png;base64,…)`; the same PNG is also written to the warehouse. matplotlib is imported
lazily: loading the code location does not pay for it.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Sequence

COLORS = {"completed": "#2f9e44", "failed": "#e03131", "unknown": "#f08c00", "skipped": "#868e96",
          "pending": "#1c7ed6", "rejected": "#ae3ec9"}
_DPI = 80


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    plt.close(fig)
    return buf.getvalue()


def _mix(value) -> dict[str, int]:
    if not value:
        return {}
    return json.loads(value) if isinstance(value, str) else dict(value)


def _bar_mix(ax, mix: dict[str, int], title: str) -> None:
    ax.set_title(title, fontsize=10)
    if not mix:
        ax.text(0.5, 0.5, "no videos", ha="center", va="center", transform=ax.transAxes, color="#868e96")
        ax.set_xticks([])
        ax.set_yticks([])
        return
    keys = sorted(mix)
    ax.bar(keys, [mix[k] for k in keys], color="#1c7ed6")
    ax.set_ylabel("videos")
    ax.yaxis.get_major_locator().set_params(integer=True)


def daily_chart(row: dict) -> bytes:
    """One day: outcomes, latency (queue / run / total), and the resolution mix of the videos.

    Drawn with Pillow (~10 ms) rather than matplotlib (~200 ms on a small CPU): every day's run draws this
    chart on its critical path. Horizontal bars with their values printed, three panels side by side."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (800, 224), "white")
    draw = ImageDraw.Draw(image)
    outcomes = ("completed", "failed", "unknown", "skipped", "pending", "rejected")
    _hbars(draw, (8, 6, 262, 218), f"{row.get('day')}: {row.get('planned', 0)} planned",
           [(k, row.get(k) or 0, COLORS[k]) for k in outcomes], "{:,.0f}", "no items")
    lat = (("in queue p50", "queue_p50_s", "#adb5bd"), ("running p50", "run_p50_s", "#adb5bd"),
           ("total p50", "latency_p50_s", "#495057"), ("total p95", "latency_p95_s", "#495057"),
           ("total max", "latency_max_s", "#495057"))
    _hbars(draw, (272, 6, 532, 218), "seconds from submit to completion",
           [(label, row.get(key), color) for label, key, color in lat if row.get(key) is not None], "{:,.1f}",
           "no completed items")
    mix = _mix(row.get("resolution_mix"))
    _hbars(draw, (542, 6, 792, 218), "resolution mix", [(k, mix[k], "#1c7ed6") for k in sorted(mix)],
           "{:,.0f}", "no videos")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _hbars(draw, box: tuple[int, int, int, int], title: str, bars: list[tuple[str, float, str]], fmt: str,
           empty: str) -> None:
    """One panel: a title, then a labelled horizontal bar per value, scaled to the largest, value at its end."""
    from PIL import ImageFont

    font, bold = ImageFont.load_default(size=12), ImageFont.load_default(size=13)
    x0, y0, x1, y1 = box
    draw.text(((x0 + x1) / 2, y0), title, fill="#212529", font=bold, anchor="mt")
    draw.rectangle((x0, y0 + 22, x1, y1), outline="#dee2e6")
    if not bars:
        draw.text(((x0 + x1) / 2, (y0 + 22 + y1) / 2), empty, fill="#868e96", font=font, anchor="mm")
        return
    label_w = max(draw.textlength(label, font=font) for label, _, _ in bars) + 10
    value_w = max(draw.textlength(fmt.format(v), font=font) for _, v, _ in bars) + 10
    top, row_h = y0 + 28, min(28.0, (y1 - y0 - 34) / len(bars))
    largest = max(v for _, v, _ in bars) or 1
    for i, (label, value, color) in enumerate(bars):
        middle = top + (i + 0.5) * row_h
        draw.text((x0 + label_w - 6, middle), label, fill="#343a40", font=font, anchor="rm")
        end = x0 + label_w + (x1 - x0 - label_w - value_w) * value / largest
        if value:
            draw.rectangle((x0 + label_w, middle - row_h * 0.35, end, middle + row_h * 0.35), fill=color)
        draw.text((end + 4, middle), fmt.format(value), fill="#343a40", font=font, anchor="lm")


def summary_chart(day_rows: Sequence[dict], total: dict | None, endpoints: Sequence[dict] = ()) -> bytes:
    """All days: daily volume by outcome, p50/p95 latency per day, and the overall resolution mix (`day_rows`:
    each day's total row). With more than one endpoint (`endpoints`: rows of the `endpoint_comparison` view) a
    second row of panels compares them: videos and success rate, cost per video-second, latency p50/p95."""
    plt = _plt()
    several = len(endpoints) > 1
    fig, axes = plt.subplots(2 if several else 1, 3, figsize=(12, 6.6 if several else 3.2), squeeze=False,
                             gridspec_kw={"width_ratios": [2.2, 2.2, 1] if not several else [1.6, 1.6, 1.6]})
    a, b, c = axes[0]
    days = [str(r["day"]) for r in day_rows]
    x = list(range(len(days)))
    bottom = [0] * len(days)
    for key in ("completed", "failed", "unknown", "skipped", "pending", "rejected"):
        values = [r.get(key) or 0 for r in day_rows]
        if any(values):
            a.bar(x, values, bottom=bottom, color=COLORS[key], label=key)
            bottom = [p + v for p, v in zip(bottom, values)]
    a.set_title("daily volume", fontsize=10)
    a.set_ylabel("items")
    a.yaxis.get_major_locator().set_params(integer=True)
    if any(bottom):
        a.set_ylim(0, max(bottom) * 1.35)  # room for the legend
        a.legend(fontsize=7, loc="upper left", ncol=3)
    b.set_title("latency submit → completion (s)", fontsize=10)
    for key, label, style in (("latency_p50_s", "p50", "o-"), ("latency_p95_s", "p95", "s-"),
                              ("queue_p50_s", "queue p50", "^--")):
        values = [r.get(key) for r in day_rows]
        if any(v is not None for v in values):
            b.plot([i for i, v in zip(x, values) if v is not None], [v for v in values if v is not None], style,
                   label=label, markersize=4)
    if b.lines:
        b.set_ylim(0, max(max(line.get_ydata()) for line in b.lines) * 1.3 or 1)
        b.legend(fontsize=7, loc="upper left", ncol=3)
    for ax in (a, b):
        ax.set_xticks(x)
        ax.set_xticklabels(days, rotation=30 if len(days) > 3 else 0, ha="right" if len(days) > 3 else "center",
                           fontsize=8)
        if len(days) > 14:  # thin the labels on long ranges
            for i, label in enumerate(ax.get_xticklabels()):
                label.set_visible(i % max(1, len(days) // 10) == 0)
    if not days:
        for ax in (a, b):
            ax.text(0.5, 0.5, "no days yet", ha="center", va="center", transform=ax.transAxes, color="#868e96")
    _bar_mix(c, _mix((total or {}).get("resolution_mix")), "resolution mix (all days)")
    if several:
        _endpoint_panels(axes[1], list(endpoints))
    fig.tight_layout()
    return _png(fig)


def _short(endpoint_id) -> str:
    """An endpoint's label on an axis: without `fal-ai/` and the usual `/image-to-video` tail, at most 28 chars."""
    name = str(endpoint_id).removeprefix("fal-ai/").removesuffix("/image-to-video")
    return name if len(name) <= 28 else name[:13] + "…" + name[-14:]


def _endpoint_panels(axes, rows: list[dict]) -> None:
    """Three horizontal-bar panels, one bar (or pair) per endpoint: videos with the success rate written beside,
    estimated and billed USD per video-second, latency p50 and p95."""
    a, b, c = axes
    labels = [_short(r["endpoint_id"]) for r in rows]
    y = list(range(len(rows)))
    a.barh(y, [r.get("videos") or 0 for r in rows], color=COLORS["completed"])
    for i, r in enumerate(rows):
        rate = r.get("success_rate")
        a.text(r.get("videos") or 0, i, f" {rate:.0%}" if rate is not None else " –", va="center", fontsize=8)
    a.set_title("videos per endpoint (success rate)", fontsize=10)
    a.xaxis.get_major_locator().set_params(integer=True)
    a.set_xlim(0, max((r.get("videos") or 0) for r in rows) * 1.3 or 1)
    for ax, title, pairs in (
            (b, "USD per video-second", (("estimated_usd_per_video_second", "estimated", "#adb5bd"),
                                         ("billed_usd_per_video_second", "billed by fal", "#1c7ed6"))),
            (c, "latency submit → completion (s)", (("latency_p50_s", "p50", "#adb5bd"),
                                                    ("latency_p95_s", "p95", "#495057")))):
        for j, (key, label, color) in enumerate(pairs):
            ax.barh([i + (j - 0.5) * 0.4 for i in y], [r.get(key) or 0 for r in rows], height=0.4, color=color,
                    label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlim(0, max(max((r.get(key) or 0) for r in rows) for key, _, _ in pairs) * 1.35 or 1)
        ax.legend(fontsize=7, loc="best")
    for ax in (a, b, c):
        ax.set_yticks(y)
        ax.set_yticklabels(labels, fontsize=8)
        ax.invert_yaxis()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def markdown_with_chart(markdown: str, png: bytes, alt: str = "chart") -> str:
    """The chart as an inline image (rendered by the Dagster UI), then `markdown`."""
    return f"![{alt}]({data_uri(png)})\n\n{markdown}\n"
