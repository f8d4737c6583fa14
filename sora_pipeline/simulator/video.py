"""Synthesize real, small MP4 clips (H.264 + AAC) with PyAV, with an on-disk cache.

The first frame is the input image scaled/cropped to the output size; later frames add a moving bar and a slow
horizontal pan so the clip has motion. Frames are built directly in yuv420p so encoding is the dominant cost.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import tempfile
import threading
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from sora_pipeline.wire import is_loopback

AUDIO_RATE = 48_000
AUDIO_FRAME = 1024
_RESOLUTION_SHORT_SIDE = {"720p": 720, "1080p": 1080}



def _value(x: object) -> str:
    return str(getattr(x, "value", x))


def dimensions(resolution: object, aspect_ratio: object, image_w: int | None = None,
               image_h: int | None = None) -> tuple[int, int]:
    """Output (width, height), both even: the resolution ("720p", "768P", "auto" = 720p) is the shorter side;
    the aspect ratio is "W:H" (16:9, 9:16, 1:1, ...) or `auto`, which follows the image (portrait → 9:16)."""
    res = _value(resolution).lower()
    short = _RESOLUTION_SHORT_SIDE.get(res) or (int(res[:-1]) if res[:-1].isdigit() and res.endswith("p") else 720)
    aspect = _value(aspect_ratio)
    w, _, h = aspect.partition(":")
    if aspect == "auto" or not (w.isdigit() and h.isdigit() and int(w) > 0 and int(h) > 0):
        portrait = bool(image_w and image_h and image_h > image_w)
        w, h = ("9", "16") if portrait else ("16", "9")
    aw, ah = int(w), int(h)
    long = short * max(aw, ah) // min(aw, ah) // 2 * 2
    short = short // 2 * 2
    return (short, long) if ah > aw else (long, short) if aw > ah else (short, short)


def image_size(image_bytes: bytes | None) -> tuple[int, int] | None:
    """(width, height) of an encoded image, or None if missing/undecodable (header only; cheap)."""
    if not image_bytes:
        return None
    try:
        from PIL import Image

        with Image.open(io.BytesIO(image_bytes)) as im:
            return im.size
    except Exception:
        return None


def _first_frame_rgb(image_bytes: bytes | None, width: int, height: int, seed: int) -> np.ndarray:
    if image_bytes:
        try:
            from PIL import Image, ImageOps

            with Image.open(io.BytesIO(image_bytes)) as im:
                fitted = ImageOps.fit(im.convert("RGB"), (width, height), method=Image.Resampling.BILINEAR)
                return np.asarray(fitted, dtype=np.uint8).copy()
        except Exception:
            pass
    rng = random.Random(seed)
    colour = [rng.randrange(40, 216) for _ in range(3)]
    return np.full((height, width, 3), colour, dtype=np.uint8)


def clip_key(image_bytes: bytes | None, width: int, height: int, duration_s: float, fps: int, seed: int) -> str:
    """Cache key of a clip: sha256 over the image bytes and the clip parameters."""
    h = hashlib.sha256()
    h.update(image_bytes or b"")
    h.update(f"|{width}x{height}|{float(duration_s)!r}|{fps}|{seed}|v1".encode())
    return h.hexdigest()


def _encode(output, image_bytes: bytes | None, width: int, height: int, duration_s: float, fps: int,
            seed: int) -> None:
    n_frames = int(round(duration_s * fps))
    base_rgb = _first_frame_rgb(image_bytes, width, height, seed)
    base = av.VideoFrame.from_ndarray(base_rgb, format="rgb24").reformat(format="yuv420p").to_ndarray()
    with av.open(output, mode="w", format="mp4") as container:
        vs = container.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        vs.options = {"preset": "ultrafast"}
        vs.codec_context.time_base = Fraction(1, fps)
        aus = container.add_stream("aac", rate=AUDIO_RATE)
        aus.layout = "mono"
        n_samples = int(round(duration_s * AUDIO_RATE))
        tone = 220.0 + 220.0 * random.Random(seed).random()
        sample_pos = 0
        bar_w = max(8, width // 60)
        work = base.copy()
        prev_x = None
        for i in range(n_frames):
            if prev_x is not None:  # restore the columns the previous bar covered
                work[:height, prev_x:prev_x + bar_w] = base[:height, prev_x:prev_x + bar_w]
                prev_x = None
            if i > 0:  # frame 0 is the image itself; later frames carry a bar sweeping left to right
                prev_x = (i * max(1, (width - bar_w) // max(1, n_frames - 1))) % max(1, width - bar_w)
                work[:height, prev_x:prev_x + bar_w] = 235
            arr = work
            frame = av.VideoFrame.from_ndarray(arr, format="yuv420p")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for packet in vs.encode(frame):
                container.mux(packet)
            # keep audio interleaved with video: encode samples up to the end of this frame
            target = min(n_samples, int(round((i + 1) * AUDIO_RATE / fps)))
            while sample_pos + AUDIO_FRAME <= target or (target == n_samples and sample_pos < n_samples):
                count = min(AUDIO_FRAME, n_samples - sample_pos)
                t = (np.arange(sample_pos, sample_pos + count, dtype=np.float32)) / AUDIO_RATE
                samples = (0.2 * np.sin(2 * np.pi * tone * t)).astype(np.float32).reshape(1, -1)
                af = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
                af.sample_rate = AUDIO_RATE
                af.pts = sample_pos
                af.time_base = Fraction(1, AUDIO_RATE)
                for packet in aus.encode(af):
                    container.mux(packet)
                sample_pos += count
        for packet in vs.encode(None):
            container.mux(packet)
        for packet in aus.encode(None):
            container.mux(packet)


def synthesize_mp4(image_bytes: bytes | None, width: int, height: int, duration_s: float, fps: int = 24,
                   seed: int = 0, path: str | os.PathLike | None = None) -> bytes:
    """Encode a clip of exactly `round(duration_s * fps)` frames; write it to `path` if given, return its bytes."""
    buf = io.BytesIO()
    _encode(buf, image_bytes, int(width), int(height), float(duration_s), int(fps), seed)
    data = buf.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data


_key_locks: dict[str, threading.Lock] = {}
_key_locks_guard = threading.Lock()


def cached_clip(cache_dir: str | os.PathLike, image_bytes: bytes | None, width: int, height: int,
                duration_s: float, fps: int = 24, seed: int = 0) -> Path:
    """Path of the clip in `cache_dir` (named `{clip_key}.mp4`), encoding it once if it is not there yet."""
    key = clip_key(image_bytes, width, height, duration_s, fps, seed)
    target = Path(cache_dir) / f"{key}.mp4"
    if target.exists():
        return target
    with _key_locks_guard:
        lock = _key_locks.setdefault(key, threading.Lock())
    with lock:
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            data = synthesize_mp4(image_bytes, width, height, duration_s, fps, seed)
            fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, target)
    return target


_uploads: dict[str, str] = {}  # file URL of an upload to a simulator of this process → the file on disk
_uploads_lock = threading.Lock()


def register_upload(file_url: str, path: str) -> None:
    """Remember where the file served at `file_url` (`simulator/storage_server.py`) lies, so a job starts from it."""
    with _uploads_lock:
        _uploads[file_url] = path


def load_image_bytes(image_url: str, timeout: float = 10.0) -> bytes | None:
    """Bytes of the input image: a `data:` URI, a file uploaded to a simulator of this process (read from disk),
    or an `http://` loopback URL; anything else → None (placeholder).

    Never touches a non-loopback host."""
    with _uploads_lock:
        uploaded = _uploads.get(image_url)
    if uploaded is not None:
        try:
            return Path(uploaded).read_bytes()
        except OSError:
            return None
    if image_url.startswith("data:"):
        header, _, data = image_url.partition(",")
        if not header.endswith(";base64"):
            return None
        try:
            import base64

            return base64.b64decode(data, validate=False)
        except Exception:
            return None
    from urllib.parse import urlsplit

    parts = urlsplit(image_url)
    if parts.scheme != "http" or not is_loopback(parts.hostname):
        return None
    try:
        import httpx

        with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
            resp = client.get(image_url)
        return resp.content if resp.status_code == 200 else None
    except Exception:
        return None
