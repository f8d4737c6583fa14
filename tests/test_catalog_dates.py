"""Rows that no day reads (`catalog_dates`): a scheduled_date that is null, not a date, or before the first day
partition; each named by its file, row number and item_id, all counted."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq

from sora_pipeline.catalog import catalog_dates, read_catalog_day
from sora_pipeline.catalog import dates as dates_mod
from tests.test_catalog import D1, SCHEMA, row, write


def test_rows_without_a_usable_date_are_named_by_file_row_and_item_id(tmp_path):
    cat = tmp_path / "catalog"
    base = {"prompt": "p", "image_uri": "https://img.example/a.png"}
    write(cat / "a.parquet", [row(i, day=d) for i, d in (("a0", "2026-11-20"), ("a1", "12/01/2026"), ("a2", None),
                                                         ("a3", "2026-11-20T08:00"), ("a4", "2026-1-05"))],
          schema=SCHEMA.set(3, pa.field("scheduled_date", pa.string())))
    pq.write_table(pa.table({"item_id": ["t0", "t1"], **{k: [v] * 2 for k, v in base.items()},
                             "scheduled_date": pa.array([datetime(2026, 11, 20, 8), None], pa.timestamp("s"))}),
                   cat / "b.parquet")
    pq.write_table(pa.table({"item_id": ["n0"], **{k: [v] for k, v in base.items()},
                             "scheduled_date": pa.array([20261120], pa.int64())}), cat / "c.parquet")
    pq.write_table(pa.table({"item_id": ["o0", "o1"], **{k: [v] * 2 for k, v in base.items()},
                             "scheduled_date": pa.array([date(2019, 5, 1), D1], pa.date32())}), cat / "d.parquet")
    pq.write_table(pa.table({"item_id": ["x0"], **{k: [v] for k, v in base.items()}}), cat / "e.parquet")
    report = catalog_dates(str(cat), first_day="2026-01-01")
    assert (report.rows, report.undated, report.early) == (11, 6, 1)
    assert [r.line() for r in report.examples] == [
        "a.parquet row 1 (item_id=a1): scheduled_date '12/01/2026' is not a date (use YYYY-MM-DD)",
        "a.parquet row 2 (item_id=a2): scheduled_date is missing",
        "a.parquet row 4 (item_id=a4): scheduled_date '2026-1-05' is not a date (use YYYY-MM-DD)",
        "b.parquet row 1 (item_id=t1): scheduled_date is missing",
        "c.parquet row 0 (item_id=n0): scheduled_date 20261120 is not a date (use YYYY-MM-DD)",
        "e.parquet row 0 (item_id=x0): scheduled_date is missing",
        "d.parquet row 0 (item_id=o0): scheduled_date '2019-05-01' is before the first day partition"]
    assert report.lines()[0] == ("7 of 11 catalog rows belong to no day: 6 without a usable scheduled_date; 1 "
                                 "dated before the first day 2026-01-01 (SORA_PARTITIONS_START)")
    # every row is either some day's (read by that day's slice) or named above: nothing vanishes
    days = {D1: 4, date(2019, 5, 1): 1}
    assert sum(read_catalog_day(str(cat), d).rows_scanned for d in days) == report.rows - report.undated


def test_undated_rows_are_all_counted_and_a_few_named(tmp_path):
    rows = [row(f"r{i}", day=None if i % 2 else D1) for i in range(5000)]
    write(tmp_path / "c.parquet", rows)
    report = catalog_dates(str(tmp_path / "c.parquet"), limit=3)
    assert (report.rows, report.undated) == (5000, 2500)
    assert [(r.row, r.item_id) for r in report.examples] == [(1, "r1"), (3, "r3"), (5, "r5")]
    assert len(report.lines()) == 4 and "(the first 3 below)" in report.lines()[0]


def test_a_date_column_without_nulls_is_not_read(tmp_path, monkeypatch):
    write(tmp_path / "c.parquet", [row(f"r{i}", day=D1 + timedelta(days=i % 3)) for i in range(300)],
          row_group_size=100)

    def no_read(values):
        raise AssertionError("the statistics say there is no null")

    monkeypatch.setattr(dates_mod, "_days", no_read)
    report = catalog_dates(str(tmp_path / "c.parquet"), first_day=D1)
    assert (report.rows, report.lost, report.lines()) == (300, 0, [])
