"""MP4 probing with PyAV: header-only metadata (fast path) and a decode-everything baseline.

`probe_video` reads only container/stream headers (`stream.frames`, `average_rate`, durations). Only when the
container does not record a frame count (fragmented MP4, some streamed files) does it demux the video packets and
count them — still without decoding. `probe_video_by_decoding` decodes every frame and exists for benchmarks and
cross-checks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, BinaryIO

import av

__all__ = ["MediaProbeError", "VideoProbe", "probe_video", "probe_video_by_decoding"]


class MediaProbeError(ValueError):
    """The file is missing, not a media container, corrupt, or has no video stream."""


@dataclass(frozen=True)
class VideoProbe:
    width: int
    height: int
    fps: float
    num_frames: int
    duration: float  # seconds
    has_audio: bool
    video_codec: str
    audio_codec: str | None
    frames_counted: bool  # True if the frame count came from demuxing because the header did not record it


Source = str | os.PathLike | BinaryIO


def _name(source: Source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return str(getattr(source, "name", None) or f"<{type(source).__name__}>")


# MP4/MOV headers carry size, rate and counts: don't let FFmpeg's stream analysis read (and decode) much more.
_FAST_OPTIONS = {"probesize": "32", "analyzeduration": "0"}


class _Opened:
    """Context manager: open `source` with PyAV, translating every failure into MediaProbeError.

    With `fast`, stream analysis is cut short; if that leaves the video size unknown (formats whose headers do
    not carry it), the source is reopened with FFmpeg's default analysis.
    """

    def __init__(self, source: Source, fast: bool = False):
        self.source = source
        self.fast = fast
        self.name = _name(source)
        self.container: Any = None
        self._pos: int | None = None

    def __enter__(self) -> Any:
        src = self.source
        if not isinstance(src, (str, os.PathLike)):
            try:
                self._pos = src.tell() if src.seekable() else None
            except (AttributeError, OSError, ValueError):
                self._pos = None
        else:
            src = os.fspath(src)
            if not os.path.isfile(src):
                raise MediaProbeError(f"cannot probe {self.name!r}: no such file")
        try:
            self.container = av.open(src, mode="r", options=dict(_FAST_OPTIONS) if self.fast else {})
            if self.fast and self._size_unknown() and (isinstance(src, str) or self._pos is not None):
                self.container.close()
                self.container = None
                if self._pos is not None:
                    src.seek(self._pos)
                self.container = av.open(src, mode="r")
        except (av.FFmpegError, OSError, ValueError, EOFError) as exc:
            self.close()
            raise MediaProbeError(f"cannot probe {self.name!r}: not a readable media file ({exc})") from exc
        if not self.container.streams.video:
            self.close()
            raise MediaProbeError(f"cannot probe {self.name!r}: the file has no video stream")
        return self.container

    def _size_unknown(self) -> bool:
        video = self.container.streams.video
        return bool(video) and not (video[0].codec_context.width and video[0].codec_context.height)

    def close(self) -> None:
        if self.container is not None:
            try:
                self.container.close()
            finally:
                self.container = None
        if self._pos is not None:
            try:
                self.source.seek(self._pos)  # type: ignore[union-attr]
            except (OSError, ValueError):
                pass

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()
        if exc is not None and not isinstance(exc, MediaProbeError) and isinstance(
            exc, (av.FFmpegError, OSError, ValueError, EOFError)
        ):
            raise MediaProbeError(f"cannot probe {self.name!r}: corrupt or truncated media ({exc})") from exc


def _audio_codec(container: Any) -> str | None:
    audio = container.streams.audio
    return audio[0].codec_context.name if audio else None


def _rate(stream: Any) -> Fraction | None:
    for attr in ("average_rate", "guessed_rate", "base_rate"):
        rate = getattr(stream, attr, None)
        if rate:
            return Fraction(rate)
    return None


def _stream_seconds(stream: Any) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return None


def _median_rate(durations: list[int], time_base: Any) -> Fraction | None:
    """Frame rate from the median frame/packet duration (robust for constant-rate video without a header)."""
    durations = sorted(d for d in durations if d and d > 0)
    if not durations or not time_base:
        return None
    return 1 / (durations[len(durations) // 2] * Fraction(time_base))


def probe_video(source: Source) -> VideoProbe:
    """Probe an MP4 (or any container PyAV reads) from headers; demux-count frames only if the header lacks them.

    `source` is a path or a binary file object (its position is restored when seekable). Duration prefers the
    video stream's own duration, then the container's; fps is the stream's average frame rate.
    """
    opened = _Opened(source, fast=True)
    with opened as container:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        width, height = int(ctx.width or 0), int(ctx.height or 0)
        rate = _rate(stream)
        num_frames = int(stream.frames or 0)
        duration = _stream_seconds(stream)
        frames_counted = False
        if num_frames <= 0:
            frames_counted = True
            first: int | None = None
            end: int | None = None
            durations: list[int] = []
            for packet in container.demux(stream):
                if packet.size == 0:  # the flush packet at end of stream
                    continue
                num_frames += 1
                durations.append(packet.duration or 0)
                if packet.pts is not None:
                    first = packet.pts if first is None else min(first, packet.pts)
                    stop = packet.pts + (packet.duration or 0)
                    end = stop if end is None else max(end, stop)
            if duration is None and first is not None and end is not None and stream.time_base:
                duration = float((end - first) * stream.time_base)
            # without a header frame count, average_rate is an estimate too; trust the packets' cadence
            rate = _median_rate(durations, stream.time_base) or rate
        if duration is None and container.duration:
            duration = container.duration / av.time_base
        if duration is None and rate and num_frames:
            duration = float(num_frames / rate)
        if rate is None and duration:
            rate = Fraction(num_frames) / Fraction(duration)
        if width <= 0 or height <= 0 or num_frames <= 0:
            raise MediaProbeError(f"cannot probe {opened.name!r}: the video stream has no frames or no size")
        return VideoProbe(
            width=width,
            height=height,
            fps=float(rate or 0.0),
            num_frames=num_frames,
            duration=float(duration or 0.0),
            has_audio=bool(container.streams.audio),
            video_codec=ctx.name,
            audio_codec=_audio_codec(container),
            frames_counted=frames_counted,
        )


def probe_video_by_decoding(source: Source) -> VideoProbe:
    """The slow baseline: decode every video frame; size from the frames, duration from their timestamps."""
    opened = _Opened(source)
    with opened as container:
        stream = container.streams.video[0]
        count = 0
        width = height = 0
        first: int | None = None
        end: int | None = None
        durations: list[int] = []
        for frame in container.decode(stream):
            count += 1
            durations.append(getattr(frame, "duration", None) or 0)
            width, height = frame.width, frame.height
            if frame.pts is not None:
                first = frame.pts if first is None else min(first, frame.pts)
                stop = frame.pts + (getattr(frame, "duration", None) or 0)
                end = stop if end is None else max(end, stop)
        if count == 0:
            raise MediaProbeError(f"cannot probe {opened.name!r}: no decodable video frames")
        rate = _median_rate(durations, stream.time_base) or _rate(stream)
        duration: float | None = None
        if first is not None and end is not None and end > first and stream.time_base:
            duration = float((end - first) * stream.time_base)
        if duration is None and rate:
            duration = float(count / rate)
        if rate is None and duration:
            rate = Fraction(count) / Fraction(duration)
        return VideoProbe(
            width=int(width),
            height=int(height),
            fps=float(rate or 0.0),
            num_frames=count,
            duration=float(duration or 0.0),
            has_audio=bool(container.streams.audio),
            video_codec=stream.codec_context.name,
            audio_codec=_audio_codec(container),
            frames_counted=True,
        )
