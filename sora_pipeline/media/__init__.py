"""The media room: download finished videos with caps (`download`), probe them with PyAV (`probe`), and reconcile
what the API said with what the file holds (`reconcile`). No Dagster import. PyAV is imported on first use of
the probe's names (importing `media.download` or `media.reconcile` does not load it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sora_pipeline.media.probe import MediaProbeError, VideoProbe, probe_video, probe_video_by_decoding

__all__ = ["MediaProbeError", "VideoProbe", "probe_video", "probe_video_by_decoding"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from sora_pipeline.media import probe

        return getattr(probe, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
