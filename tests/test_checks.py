"""The video_metadata checks as functions of a day's rows (the Dagster wiring is exercised by test_pipeline)."""

from sora_pipeline.defs.checks import VIDEO_CHECKS, dimension_problems


def row(**over) -> dict:
    base = dict(item_id="a", width=1280, height=720, resolution="720p", aspect_ratio="16:9", fps=24.0,
                num_frames=96, duration=4.0, requested_duration=4)
    return base | over


def problems(name: str, rows: list[dict]) -> list[str]:
    return VIDEO_CHECKS[name][1](rows)


def test_good_rows_pass_every_check():
    rows = [row(), row(item_id="b", width=1080, height=1920, resolution="1080p", aspect_ratio="9:16",
                    num_frames=288, duration=12.0, requested_duration=12)]
    assert {name: problems(name, rows) for name in VIDEO_CHECKS} == {name: [] for name in VIDEO_CHECKS}


def test_each_check_names_the_item_and_the_problem():
    assert dimension_problems(row(width=1920, height=1080)) == ["a: 1920×1080 is not 720p"]
    assert dimension_problems(row(width=720, height=720, resolution="auto")) == ["a: 720×720 is not 16:9"]
    assert dimension_problems(row(width=0)) == ["a: width/height 0×720 not positive"]
    assert problems("frame_count_consistent", [row(num_frames=90)]) == ["a: 90 frames vs 24.0 fps × 4.0 s"]
    assert problems("frame_count_consistent", [row(fps=None)]) == ["a: 96 frames vs None fps × 4.0 s"]
    assert problems("duration_matches_request", [row(duration=3.2)]) == ["a: 3.2 s, asked 4 s"]
    assert problems("item_id_unique", [row(), row(), row(item_id="b")]) == ["a appears 2 times"]
