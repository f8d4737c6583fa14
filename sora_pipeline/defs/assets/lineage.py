"""Materialization metadata every table reports: row count, column schema, column lineage, table name and URI."""

from __future__ import annotations

import dagster as dg
import pyarrow as pa

from sora_pipeline.warehouse.schemas import TableDef

_ARROW_TO_DAGSTER = {"string": "string", "large_string": "string", "int32": "int", "int64": "int",
                     "double": "float", "float": "float", "bool": "bool", "date32[day]": "date"}


def column_schema(table: TableDef) -> dg.TableSchema:
    return dg.TableSchema(columns=[
        dg.TableColumn(c.name, _ARROW_TO_DAGSTER.get(str(c.type), str(c.type)), description=c.description)
        for c in table.columns])


def column_lineage(table: TableDef, upstream: str = "catalog_items") -> dg.TableColumnLineage:
    return dg.TableColumnLineage(deps_by_column={
        c.name: [dg.TableColumnDep(asset_key=dg.AssetKey(upstream), column_name=src) for src in c.derives_from]
        for c in table.columns if c.derives_from})


def column_lineage_md(table: TableDef, upstream: str = "catalog_items") -> str | None:
    """The column lineage as a Markdown table (`| column | derives from |`), for people: Dagster OSS does not draw
    `dagster/column_lineage`. None when no column derives from the upstream table. The same layout as the
    column-lineage section of docs/reference.md."""
    derived = [c for c in table.columns if c.derives_from]
    if not derived:
        return None
    lines = [f"Column lineage of `{table.name}` (from `{upstream}`)", "", "| column | derives from |", "|---|---|"]
    lines += [f"| `{c.name}` | {', '.join(f'`{upstream}.{src}`' for src in c.derives_from)} |" for c in derived]
    other = [c.name for c in table.columns if not c.derives_from]
    if other:
        lines += ["", f"No recorded source (computed by this step): {', '.join(f'`{n}`' for n in other)}."]
    return "\n".join(lines)


def table_metadata(table: TableDef, uri: str, row_count: int, *, upstream: str | None = "catalog_items",
                   extra: dict | None = None) -> dict:
    metadata = {
        "dagster/row_count": dg.MetadataValue.int(row_count),
        "dagster/column_schema": column_schema(table),
        "dagster/table_name": table.name,
        "dagster/uri": dg.MetadataValue.path(uri),
    }
    if upstream:
        metadata["dagster/column_lineage"] = column_lineage(table, upstream)
        if (md := column_lineage_md(table, upstream)) is not None:
            metadata["column_lineage_md"] = dg.MetadataValue.md(md)
    metadata.update(extra or {})
    return metadata


def spec_metadata(table: TableDef, upstream: str = "catalog_items") -> dict:
    """Static metadata for the asset definition (shown before the first materialization), with the column
    lineage as Markdown when the table has any."""
    metadata = {"dagster/column_schema": column_schema(table), "dagster/table_name": table.name}
    if (md := column_lineage_md(table, upstream)) is not None:
        metadata["column_lineage_md"] = dg.MetadataValue.md(md)
    return metadata


def arrow_rows(data: pa.Table | None) -> list[dict]:
    return [] if data is None else data.to_pylist()


def selected_results(context: dg.AssetExecutionContext, metadata_by_key: dict[str, dict]):
    """MaterializeResults for the selected keys of a subsettable multi-asset (the tables are written anyway)."""
    selected = {k.to_user_string() for k in context.selected_asset_keys}
    for key, metadata in metadata_by_key.items():
        if key in selected:
            yield dg.MaterializeResult(asset_key=key, metadata=metadata)
        else:
            context.log.info(f"{key} table written too (not selected, so no materialization event)")
