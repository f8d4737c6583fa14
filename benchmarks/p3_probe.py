"""P3: probing width/height/fps/num_frames/duration of a 12 s 1080p H.264 + AAC MP4: `probe_video` (headers only)
against `probe_video_by_decoding` (decodes every frame). Medians of several runs, same file, same process.

The clip is made once with `sora_pipeline.simulator.video.synthesize_mp4` from a 1920×1080 noisy gradient image
(so frames are not trivially compressible) and cached under `benchmarks/.cache/`.
"""

from __future__ import annotations

import io
import statistics
import time
from pathlib import Path

from benchmarks.common import CACHE, Result, parse_mode, rnd

NAME = "p3_probe"
WIDTH, HEIGHT, SECONDS, FPS = 1920, 1080, 12, 24


def make_clip() -> tuple[Path, float | None]:
    path = CACHE / f"p3-{WIDTH}x{HEIGHT}-{SECONDS}s-{FPS}fps-v1.mp4"
    if path.exists():
        return path, None
    import numpy as np
    from PIL import Image

    from sora_pipeline.simulator.video import synthesize_mp4

    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    img = np.stack([(x * 255 // WIDTH), (y * 255 // HEIGHT), ((x + y) * 255 // (WIDTH + HEIGHT))], -1)
    img = np.clip(img + rng.integers(-24, 24, img.shape), 0, 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    CACHE.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tmp = path.with_suffix(".part")
    synthesize_mp4(buf.getvalue(), WIDTH, HEIGHT, SECONDS, FPS, seed=3, path=tmp)
    tmp.rename(path)
    return path, time.perf_counter() - t0


def timed(fn, path: Path, k: int) -> tuple[list[float], object]:
    out, times = None, []
    for _ in range(k):
        t0 = time.perf_counter()
        out = fn(str(path))
        times.append(time.perf_counter() - t0)
    return times, out


def run(argv: list[str] | None = None) -> Result:
    from sora_pipeline.media.probe import probe_video, probe_video_by_decoding

    mode, _ = parse_mode(argv)
    k_fast, k_slow = (50, 5) if mode == "full" else (20, 3)
    path, encode_s = make_clip()
    res = Result(NAME, mode, parameters={"width": WIDTH, "height": HEIGHT, "seconds": SECONDS, "fps": FPS,
                                         "audio": "AAC mono 48 kHz", "video": "H.264 (libx264 ultrafast)",
                                         "file": path.name, "file_bytes": path.stat().st_size,
                                         "runs_probe_video": k_fast, "runs_decoding": k_slow,
                                         "warm": "one untimed call of each first (page cache, codec init)"})
    probe_video(str(path))
    probe_video_by_decoding(str(path))
    fast_t, fast = timed(probe_video, path, k_fast)
    slow_t, slow = timed(probe_video_by_decoding, path, k_slow)
    fm, sm = statistics.median(fast_t), statistics.median(slow_t)
    same = (fast.width, fast.height, fast.num_frames) == (slow.width, slow.height, slow.num_frames) \
        and abs(fast.fps - slow.fps) < 1e-6 and abs(fast.duration - slow.duration) < 1e-3
    res.numbers = {
        "probe_video_median_ms": rnd(fm * 1000), "probe_video_min_ms": rnd(min(fast_t) * 1000),
        "probe_video_p90_ms": rnd(sorted(fast_t)[int(len(fast_t) * 0.9)] * 1000),
        "decoding_median_ms": rnd(sm * 1000), "decoding_runs_ms": [rnd(t * 1000) for t in slow_t],
        "speedup": rnd(sm / fm), "values_agree": same, "probe_video": vars(fast), "decoding": vars(slow),
        "clip_encode_s": rnd(encode_s) if encode_s else "cached",
    }
    res.check("P3-time", "probe_video median", rnd(fm * 1000, 2), "≤ 50 ms", fm <= 0.05 and same, " ms",
              f"{fast.width}×{fast.height} {fast.fps:g} fps {fast.num_frames} frames {fast.duration:.3f} s, "
              f"frames_counted={fast.frames_counted}")
    res.check("P3-ratio", "decode-every-frame / probe_video", rnd(sm / fm), "≥ 10", sm / fm >= 10 and same, "×",
              f"decoding median {sm * 1000:.0f} ms; values agree: {same}")
    res.save(f"12 s 1080p MP4 ({path.stat().st_size / 2**20:.1f} MB): probe_video {fm * 1000:.2f} ms vs decoding "
             f"{sm * 1000:.0f} ms (×{sm / fm:,.0f}); values agree: {same}")
    return res


def main(argv: list[str] | None = None) -> None:
    run(argv)


if __name__ == "__main__":
    main()
