"""Tests of sora_pipeline.media.probe on real MP4s written with PyAV (libx264 yuv420p + AAC)."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pytest

from sora_pipeline.media.probe import MediaProbeError, VideoProbe, probe_video, probe_video_by_decoding


def write_mp4(target, width: int, height: int, fps: int, seconds: float, *, audio: bool = True,
              fragmented: bool = False) -> None:
    """Write a small H.264/AAC MP4 to a path or a binary file object."""
    options = {"movflags": "frag_keyframe+empty_moov"} if fragmented else {}
    container = av.open(target, mode="w", format="mp4", options=options)
    video = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
    video.width, video.height, video.pix_fmt = width, height, "yuv420p"
    astream = container.add_stream("aac", rate=44100) if audio else None
    if astream is not None:
        astream.layout = "stereo"
    frames = int(round(fps * seconds))
    yy, xx = np.mgrid[0:height, 0:width]
    for i in range(frames):
        img = np.stack([(xx + 4 * i) % 256, (yy + 2 * i) % 256, np.full_like(xx, (9 * i) % 256)], axis=-1)
        for packet in video.encode(av.VideoFrame.from_ndarray(img.astype(np.uint8), format="rgb24")):
            container.mux(packet)
    for packet in video.encode():
        container.mux(packet)
    if astream is not None:
        total, pts, chunk = int(44100 * seconds), 0, 1024
        t = np.arange(total, dtype=np.float32) / 44100
        wave = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        while pts < total:
            block = wave[pts:pts + chunk]
            block = np.pad(block, (0, chunk - len(block)))
            frame = av.AudioFrame.from_ndarray(np.stack([block, block]), format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = 44100, pts
            pts += chunk
            for packet in astream.encode(frame):
                container.mux(packet)
        for packet in astream.encode():
            container.mux(packet)
    container.close()


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clips")
    out = {
        "landscape": root / "landscape.mp4",
        "portrait": root / "portrait.mp4",
        "silent": root / "silent.mp4",
        "fragmented": root / "fragmented.mp4",
    }
    write_mp4(out["landscape"], 320, 180, 24, 2)
    write_mp4(out["portrait"], 180, 320, 30, 1)
    write_mp4(out["silent"], 160, 90, 25, 1.2, audio=False)
    write_mp4(out["fragmented"], 180, 320, 24, 2, fragmented=True)
    return out


def test_probe_landscape_from_header(clips):
    probe = probe_video(clips["landscape"])
    assert probe == VideoProbe(width=320, height=180, fps=24.0, num_frames=48, duration=2.0, has_audio=True,
                               video_codec="h264", audio_codec="aac", frames_counted=False)


def test_probe_portrait_and_str_path(clips):
    probe = probe_video(str(clips["portrait"]))
    assert (probe.width, probe.height, probe.fps, probe.num_frames) == (180, 320, 30.0, 30)
    assert probe.duration == pytest.approx(1.0)
    assert probe.has_audio and probe.audio_codec == "aac" and not probe.frames_counted


def test_probe_without_audio(clips):
    probe = probe_video(clips["silent"])
    assert (probe.width, probe.height, probe.num_frames) == (160, 90, 30)
    assert probe.has_audio is False and probe.audio_codec is None


@pytest.mark.parametrize("name", ["landscape", "portrait", "silent", "fragmented"])
def test_header_probe_agrees_with_decoding(clips, name):
    fast, slow = probe_video(clips[name]), probe_video_by_decoding(clips[name])
    assert (fast.width, fast.height, fast.num_frames, fast.has_audio, fast.video_codec, fast.audio_codec) == (
        slow.width, slow.height, slow.num_frames, slow.has_audio, slow.video_codec, slow.audio_codec)
    assert fast.fps == pytest.approx(slow.fps)
    assert fast.duration == pytest.approx(slow.duration, abs=1 / slow.fps)
    assert slow.frames_counted is True


def test_fragmented_mp4_counts_frames_by_demuxing(clips):
    container = av.open(str(clips["fragmented"]))
    try:
        assert container.streams.video[0].frames == 0  # the header really does not say
    finally:
        container.close()
    probe = probe_video(clips["fragmented"])
    assert probe.frames_counted is True
    assert (probe.width, probe.height, probe.num_frames, probe.fps) == (180, 320, 48, 24.0)
    assert probe.duration == pytest.approx(2.0, abs=1 / 24)


def test_probe_file_object_and_position_restored(clips):
    buf = io.BytesIO()
    write_mp4(buf, 320, 180, 24, 1, fragmented=True)  # a non-seekable-style write into memory
    buf.seek(0)
    probe = probe_video(buf)
    assert probe.num_frames == 24 and probe.frames_counted
    assert buf.tell() == 0
    with clips["landscape"].open("rb") as fh:
        assert probe_video(fh).num_frames == 48


def test_corrupt_file_raises_naming_the_file(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"definitely not an mp4 " * 50)
    with pytest.raises(MediaProbeError, match="bad.mp4"):
        probe_video(bad)
    with pytest.raises(MediaProbeError, match="bad.mp4"):
        probe_video_by_decoding(bad)
    assert issubclass(MediaProbeError, ValueError)


def test_truncated_and_missing_files(clips, tmp_path):
    cut = tmp_path / "cut.mp4"
    data = clips["landscape"].read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(MediaProbeError, match="cut.mp4"):
        probe_video(cut)
    with pytest.raises(MediaProbeError, match="missing.mp4"):
        probe_video(tmp_path / "missing.mp4")


def test_audio_only_file_is_not_a_video(tmp_path):
    path = tmp_path / "tone.m4a"
    container = av.open(str(path), mode="w", format="mp4")
    stream = container.add_stream("aac", rate=44100)
    stream.layout = "mono"
    for i in range(20):
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 44100, i * 1024
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    with pytest.raises(MediaProbeError, match="no video stream"):
        probe_video(path)


def test_mpegts_without_header_counts(tmp_path):
    path = tmp_path / "clip.ts"
    container = av.open(str(path), mode="w", format="mpegts")
    stream = container.add_stream("libx264", rate=24, options={"preset": "ultrafast"})
    stream.width, stream.height, stream.pix_fmt = 320, 180, "yuv420p"
    for i in range(36):
        frame = av.VideoFrame.from_ndarray(np.full((180, 320, 3), i * 5, np.uint8), format="rgb24")
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    fast, slow = probe_video(path), probe_video_by_decoding(path)
    assert fast.frames_counted and (fast.width, fast.height, fast.num_frames, fast.fps) == (320, 180, 36, 24.0)
    assert fast.duration == pytest.approx(slow.duration, abs=1 / 24)
