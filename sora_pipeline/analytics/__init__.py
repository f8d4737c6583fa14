"""The analytics room: daily statistics and the summary, per endpoint (`stats`), their Markdown (`report`) and
charts (`charts`), and DuckDB views over every output table (`query.connect`). No Dagster import."""
