"""The catalog (input): a day-filtered Parquet scan through fsspec + pyarrow.dataset, validated by the row rules
(`catalog.rows`) and the catalog-wide item_id check (`catalog.ids`); what changed is told by `catalog.changes`.

The `scheduled_date` filter is pushed down into the scan (partition pruning and row-group statistics); nothing
here loads the whole catalog or goes through pandas. docs/reference.md lists the columns and rules.
"""

from __future__ import annotations

import os
import posixpath
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Sequence

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from sora_pipeline.catalog.ids import day_row_groups, duplicated_ids, duplicated_ids_across, fragments_dataset
from sora_pipeline.endpoints import EndpointSet
from sora_pipeline.catalog.rejections import Rejections
from sora_pipeline.catalog.columns import CONTRACT_COLUMNS, REQUIRED_COLUMNS
from sora_pipeline.catalog.rows import CatalogItem, ImageResolver, check_rows, unusable
from sora_pipeline.warehouse.tables import is_local_fs

__all__ = ["CatalogError", "CatalogSlice", "image_roots_from_env", "open_catalog", "read_catalog_day"]


class CatalogError(ValueError):
    """The catalog as a whole cannot be read (missing, not Parquet, or a required column is missing)."""


@dataclass(frozen=True)
class CatalogSlice:
    """One day of the catalog: its valid items and its rejected rows."""

    day: date
    valid: list[CatalogItem]
    rejected: Rejections  # a sequence of RejectedRow, kept column by column
    catalog_uri: str
    rows_scanned: int


def image_roots_from_env(value: str | None) -> list[str]:
    """Parse `SORA_IMAGE_ROOTS`: comma-separated local folders (blanks dropped, `~` expanded)."""
    if not value:
        return []
    return [os.path.expanduser(part.strip()) for part in value.split(",") if part.strip()]


def open_catalog(uri: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and the protocol-less path of a catalog URI (local paths become absolute). Object
    stores' listing caches are dropped first: fsspec keeps filesystem instances (and their listings) for the life of
    the process, so a long-running sensor or daemon would otherwise never see a file added after its first read."""
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    if not is_local_fs(fs):
        fs.invalidate_cache()
    return fs, path


@dataclass
class _Catalog:
    uri: str
    fs: Any
    path: str
    local: bool
    is_dir: bool
    dataset: ds.Dataset
    drift: bool = False  # its files disagree on a contract column's type: read file by file (`_views`)

    @property
    def folder(self) -> str:
        if self.is_dir:
            return self.path
        return os.path.dirname(self.path) if self.local else posixpath.dirname(self.path)

    def label(self, file: str) -> str:
        """A data file's name as a reason shows it: its path inside a directory catalog, else its name."""
        if self.is_dir and file.startswith(self.path):
            return file[len(self.path):].lstrip("/")
        return posixpath.basename(file)


_DATA_SUFFIXES = (".parquet", ".parq", ".pq")


def _data_files(fs: Any, path: str, listing: Any = None) -> list[str]:
    """Parquet files under a catalog folder (of `listing`, else of `fs.find`), skipping hidden/underscore names at
    any depth (e.g. `_SUCCESS`)."""
    out = []
    for f in sorted(fs.find(path) if listing is None else listing):
        parts = f[len(path):].lstrip("/").split("/")
        if parts[-1].lower().endswith(_DATA_SUFFIXES) and not any(p.startswith((".", "_")) for p in parts):
            out.append(f)
    return out


def _open(uri: str, storage_options: dict | None) -> _Catalog:
    fs, path = open_catalog(uri, storage_options)
    local = is_local_fs(fs)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise CatalogError(f"catalog {uri!r} does not exist") from None
    is_dir = info.get("type") == "directory"
    afs = pafs.LocalFileSystem() if local else fs  # pyarrow wraps fsspec filesystems itself
    try:
        files = _data_files(fs, path) if is_dir else [path]
        if not files:
            raise CatalogError(f"catalog {uri!r} contains no Parquet files")
        rels = [f[len(path):].lstrip("/").split("/") for f in files] if is_dir else []
        if any(len(r) > 1 and "=" in r[0] for r in rels):  # hive-partitioned, e.g. scheduled_date=2026-11-20/
            dataset = ds.dataset(files, filesystem=afs, format="parquet", partitioning="hive",
                                 partition_base_dir=path)
            part_schema = dataset.partitioning.schema
            if "scheduled_date" in part_schema.names:  # partition values are inferred as strings: make it a date
                idx = part_schema.get_field_index("scheduled_date")
                typed = part_schema.set(idx, pa.field("scheduled_date", pa.date32()))
                dataset = ds.dataset(files, filesystem=afs, format="parquet", partition_base_dir=path,
                                     partitioning=ds.partitioning(typed, flavor="hive"))
        else:
            dataset = ds.dataset(files, filesystem=afs, format="parquet")
        drift = False
        if len(files) > 1:
            # the first file's schema is not the catalog's: a column may appear only in later files (only the
            # contract's columns are read, so only theirs must agree)
            schemas = [_contract_schema(f.physical_schema) for f in dataset.get_fragments()]
            try:
                schema = pa.unify_schemas(schemas, promote_options="permissive")
            except (pa.ArrowTypeError, pa.ArrowInvalid, pa.ArrowNotImplementedError):
                # files disagree (duration int64 here, string there): the catalog's schema says what the row
                # rules get, and each file is read with its own (`_read_day_per_file`)
                drift = True
                names = {n for sch in schemas for n in sch.names}
                schema = pa.schema([pa.field(c, _CANONICAL[c]) for c in CONTRACT_COLUMNS if c in names])
            for fld in _contract_schema(dataset.schema):
                if fld.name not in schema.names:
                    schema = schema.append(fld)
            if not drift:  # (a drifting catalog's dataset is never scanned as a whole)
                dataset = dataset.replace_schema(schema)
        else:
            schema = dataset.schema
    except CatalogError:
        raise
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise CatalogError(f"catalog {uri!r} is not a readable Parquet dataset: {exc}") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in schema.names]
    if missing:
        raise CatalogError(f"catalog {uri!r} is missing required column(s): {', '.join(map(repr, missing))}")
    return _Catalog(uri, fs, path, local, is_dir, dataset, drift)


def _contract_schema(schema: pa.Schema) -> pa.Schema:
    return pa.schema([f for f in schema if f.name in CONTRACT_COLUMNS])


# the types the row rules get from a catalog whose files disagree (a column's values, converted file by file)
_CANONICAL = {c: pa.string() for c in CONTRACT_COLUMNS} | {"scheduled_date": pa.date32(), "duration": pa.float64()}
# scan errors that mean "a file's type does not fit the catalog's schema": read file by file instead
_TYPE_ERRORS = (pa.ArrowTypeError, pa.ArrowInvalid, pa.ArrowNotImplementedError)


def _scan(cat: _Catalog, fn: Any) -> Any:
    try:
        return fn()
    except (pa.ArrowException, OSError) as exc:
        raise CatalogError(f"catalog {cat.uri!r} could not be scanned: {exc}") from exc


def _day_filter(dataset: ds.Dataset, day: date) -> ds.Expression:
    typ = dataset.schema.field("scheduled_date").type
    flt = _day_filter_for(typ, day)
    if flt is None:
        raise CatalogError(f"scheduled_date is {typ}: expected a date, a timestamp or an ISO date string")
    return flt


def _day_filter_for(typ: pa.DataType | None, day: date) -> ds.Expression | None:
    """The day's rows, for a scheduled_date column of type `typ` (None: absent, i.e. null); None if that type
    holds no dates. A date compares as it is (row-group statistics prune), a timestamp by its date, a string by
    its first ten characters after stripping whitespace (`2026-11-20`, `2026-11-20T08:00`): a string that is not
    a date is no day's, instead of failing every day's scan."""
    field = ds.field("scheduled_date")
    if typ is not None and (pa.types.is_date32(typ) or pa.types.is_date64(typ)):
        return field == pa.scalar(day, type=typ)
    if typ is None or pa.types.is_timestamp(typ) or pa.types.is_null(typ):
        return field.cast(pa.date32()) == pa.scalar(day, type=pa.date32())
    if pa.types.is_dictionary(typ):
        field, typ = field.cast(typ.value_type), typ.value_type
    if pa.types.is_string_view(typ):
        field, typ = field.cast(pa.string()), pa.string()
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        return pc.utf8_slice_codeunits(pc.utf8_trim_whitespace(field), 0, 10) == day.isoformat()
    return None


def read_catalog_day(uri: str, day: date | str, *, image_roots: Sequence[str] = (),
                     storage_options: dict | None = None, endpoints: EndpointSet | None = None) -> CatalogSlice:
    """The day's rows of the catalog at `uri`, validated: `valid` items and `rejected` rows with reasons.

    Only rows with `scheduled_date == day` are read (the filter is pushed into the Parquet scan); uniqueness of
    `item_id` is checked across the whole catalog by a second scan of just the `item_id` column.

    Files that disagree on a contract column's type (`duration` int64 in one, string in another) do not fail
    the day: each file is then read with its own schema, values converted to the contract's types, and a row
    whose value cannot be used is rejected with a reason naming the field, the file and its type.

    Image paths: the *catalog's folder* is `uri` itself when it is a directory (also when hive-partitioned),
    else the file's parent. Relative paths resolve against it. A local path (no protocol or `file://`) is
    accepted only if its realpath lies inside the catalog's folder, the *parent* of a directory catalog (so
    `data/catalog` may use `../images/x.png`), or one of `image_roots`; and the file must exist. For a
    non-local catalog (`memory://`, `s3://`, ...) protocol-less paths resolve inside that filesystem. URIs must
    be on the allowlist of `sora_pipeline.fal.image_sources` (https, data:image, memory://, s3/gs/az with their
    driver): `http://`, `ftp://`, chained (`a::b`), wrapper and other fsspec protocols are rejected.

    `endpoints`: the default endpoint and those a row may name in its `endpoint_id` column (default: Sora 2 Pro
    alone). Each row is checked against its own endpoint: a value that endpoint does not accept rejects the row
    with its allowed values; an endpoint outside the set rejects the row, naming the known ones.
    """
    day = date.fromisoformat(day) if isinstance(day, str) else day
    day = day.date() if isinstance(day, datetime) else day
    cat = _open(uri, storage_options)
    read = None
    if not cat.drift:
        try:
            read = _read_day(cat, day)
        except _TYPE_ERRORS:  # a file's values do not fit the unified schema (e.g. a uint64 beyond int64)
            read = None
        except (pa.ArrowException, OSError) as exc:
            raise CatalogError(f"catalog {cat.uri!r} could not be scanned: {exc}") from exc
    if read is None:
        read = _scan(cat, lambda: _read_day_per_file(cat, day))
    table, dups, notes = read
    pa.default_memory_pool().release_unused()  # the scans' buffers, before the rows become Python values
    resolver = ImageResolver(cat.fs, cat.folder, local=cat.local, is_dir=cat.is_dir, image_roots=image_roots)
    valid, rejected = check_rows(table, day, dups, resolver, notes, endpoints)
    return CatalogSlice(day=day, valid=valid, rejected=rejected, catalog_uri=uri, rows_scanned=table.num_rows)


def _read_day(cat: _Catalog, day: date) -> tuple[pa.Table, dict[str, int], dict]:
    """The fast path: one scan of the day's row groups, one id check (files agree on the columns' types)."""
    columns = [c for c in CONTRACT_COLUMNS if c in cat.dataset.schema.names]
    day_filter = _day_filter(cat.dataset, day)
    parts = day_row_groups(cat.dataset, day_filter)
    table = fragments_dataset(cat.dataset, parts).to_table(columns=columns, filter=day_filter)
    day_ids = [i for i in table.column("item_id").to_pylist() if isinstance(i, str) and i.strip()]
    return table, duplicated_ids(cat.dataset, day_ids, day_filter, parts), {}


@dataclass(frozen=True)
class _View:
    """One data file of the catalog with its own schema (its contract columns, and scheduled_date from a hive
    path or as an absent date column)."""

    fragment: ds.Fragment
    schema: pa.Schema
    label: str

    def type_of(self, name: str) -> pa.DataType | None:
        return self.schema.field(name).type if name in self.schema.names else None

    def dataset(self, cat: _Catalog) -> ds.Dataset:
        return ds.FileSystemDataset([self.fragment], self.schema, cat.dataset.format, cat.dataset.filesystem)


def _views(cat: _Catalog) -> list[_View]:
    partitioning = getattr(cat.dataset, "partitioning", None)
    parted = _contract_schema(partitioning.schema) if partitioning is not None else pa.schema([])
    views = []
    for fragment in cat.dataset.get_fragments():
        schema = _contract_schema(fragment.physical_schema)
        for fld in parted:
            if fld.name not in schema.names:
                schema = schema.append(fld)
        if "scheduled_date" not in schema.names:
            schema = schema.append(pa.field("scheduled_date", pa.date32()))  # (all null: no day's rows)
        views.append(_View(fragment, schema, cat.label(fragment.path)))
    return views


def _read_day_per_file(cat: _Catalog, day: date) -> tuple[pa.Table, dict[str, int], dict]:
    """The day's rows file by file, each read with its own schema and converted to the contract's types
    (`_conform`); then the catalog-wide id check over groups of files that agree on item_id's and
    scheduled_date's types."""
    tables: list[pa.Table] = []
    notes: dict[int, dict[str, tuple[str, Any]]] = {}
    groups: dict[tuple, list[tuple[_View, ds.Expression, list]]] = defaultdict(list)
    offset = 0
    for view in _views(cat):
        day_filter = _day_filter_for(view.type_of("scheduled_date"), day)
        key = (view.type_of("item_id"), view.type_of("scheduled_date"))
        if day_filter is None:  # a scheduled_date that is no date (e.g. int64): no day's rows, ids still count
            groups[key].append((view, ds.scalar(False), []))
            continue
        dataset = view.dataset(cat)
        parts = day_row_groups(dataset, day_filter)
        groups[key].append((view, day_filter, parts))
        columns = [c for c in CONTRACT_COLUMNS if c in view.schema.names]
        table, file_notes = _conform(fragments_dataset(dataset, parts).to_table(columns=columns, filter=day_filter),
                                     view, day)
        notes.update({offset + i: n for i, n in file_notes.items()})
        offset += table.num_rows
        tables.append(table)
    table = pa.concat_tables(tables) if tables else pa.schema(
        [pa.field(c, _CANONICAL[c]) for c in CONTRACT_COLUMNS]).empty_table()
    day_ids = [i for i in table.column("item_id").to_pylist() if isinstance(i, str) and i.strip()]
    day_ids += [str(n["item_id"][1]) for n in notes.values()
                if "item_id" in n and isinstance(n["item_id"][1], int) and not isinstance(n["item_id"][1], bool)]
    id_groups = []
    for (id_type, _), members in groups.items():
        if id_type is None:
            continue
        view = members[0][0]
        schema = pa.schema([view.schema.field("item_id"), view.schema.field("scheduled_date")])
        dataset = ds.FileSystemDataset([m[0].fragment for m in members], schema, cat.dataset.format,
                                       cat.dataset.filesystem)
        id_groups.append((dataset, members[0][1], [p for m in members for p in m[2]]))
    return table, duplicated_ids_across(id_groups, day_ids), notes


_TEXT = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)
_NUMBER = (pa.types.is_integer, pa.types.is_floating, pa.types.is_decimal)
_EXPECTED = {"duration": "a whole number of seconds"}


def _conform(table: pa.Table, view: _View, day: date) -> tuple[pa.Table, dict[int, dict[str, tuple[str, Any]]]]:
    """The day's rows of one file in the contract's types (`_CANONICAL`), and per row the values that could not
    be used (nulled in the table; the reason names the field, the file and its type)."""
    notes: dict[int, dict[str, tuple[str, Any]]] = defaultdict(dict)
    out = {}
    n = table.num_rows
    for name in CONTRACT_COLUMNS:
        target = _CANONICAL[name]
        if name == "scheduled_date":  # every row read is the day's (the filter chose them)
            out[name] = pa.array([day] * n, target)
            continue
        if name not in table.column_names:
            out[name] = pa.nulls(n, target)
            continue
        column = table.column(name)
        typ = column.type
        base = typ.value_type if pa.types.is_dictionary(typ) else typ
        kinds = _NUMBER if name == "duration" else _TEXT
        if pa.types.is_null(typ) or any(kind(base) for kind in kinds):
            try:
                out[name] = column.cast(target)
                continue
            except _TYPE_ERRORS:
                pass  # value by value below
        values = []
        for index, value in enumerate(column.to_pylist()):
            converted, ok = _convert(name, value)
            values.append(converted)
            if not ok:
                notes[index][name] = (unusable(value, typ, view.label, _EXPECTED.get(name, "a string")), value)
        out[name] = pa.array(values, target)
    return pa.table(out), dict(notes)


def _convert(name: str, value: Any) -> tuple[Any, bool]:
    """`value` in the contract's type for column `name`, and whether it could be converted."""
    if value is None:
        return None, True
    if name != "duration":
        return (value, True) if isinstance(value, str) else (None, False)
    if isinstance(value, bool):
        return None, False
    if isinstance(value, (int, float)):
        return float(value), True
    if isinstance(value, str) and value.strip().isdigit():
        return float(int(value.strip())), True
    if isinstance(value, Decimal):
        return float(value), True
    return None, False


def _canonical(value: Any) -> Any:
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


def _day_key(value: Any) -> str | None:
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip()[:10]).isoformat()
        except ValueError:
            return None
    return None
