"""The media room: download finished videos with caps (`download`), probe them with PyAV (`probe`), and reconcile
what the API said with what the file holds (`reconcile`). No Dagster import."""

from sora_pipeline.media.probe import MediaProbeError, VideoProbe, probe_video, probe_video_by_decoding

__all__ = ["MediaProbeError", "VideoProbe", "probe_video", "probe_video_by_decoding"]
