"""The analytics room: daily statistics and the summary (`stats`), their charts (`charts`) and DuckDB views over
every output table (`query.connect`). No Dagster import."""
