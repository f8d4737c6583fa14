"""The generated parts of docs/reference.md (`make reference`): table columns, column lineage, the `generations`
run config and the resource fields, taken from the code so they cannot drift.

Everything comes through the code location's stable entry point, `sora_pipeline.definitions:defs`:
- the tables are the assets whose definition carries a `dagster/column_schema`; their exact Arrow types and
  descriptions come from the table definitions those assets were built from (the objects with an `arrow_schema`
  among the loaded `sora_pipeline` modules, found by shape, not by module path);
- the column lineage is what the pipeline records (`dagster/column_lineage` on each materialization): `--write`
  runs `python -m sora_pipeline.demo` on the sample catalog in a temporary DAGSTER_HOME and warehouse (embedded
  simulator, nothing billed) and reads the latest materialization of each table;
- the run config is the `generations` op's config schema, the resources are `defs.resources`' fields.

    .venv/bin/python scripts/reference_tables.py --write   # rewrite the generated sections (~30 s: runs the demo)
    .venv/bin/python scripts/reference_tables.py --check   # exit 1 if columns / run config / resources are stale
    .venv/bin/python scripts/reference_tables.py --print columns

Each section sits between `<!-- generated:NAME -->` and `<!-- /generated:NAME -->` in docs/reference.md.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "reference.md"
ORDER = ("catalog_items", "rejected_items", "generations", "failed_generations", "video_metadata",
         "generation_daily_stats", "generation_summary")
SECRETS = ("FAL_KEY", "SORA_FAL_QUEUE_URL", "SORA_OPENAI_API_KEY", "SORA_LEDGER_URL", "SORA_WEBHOOK_URL")
FAST_SECTIONS = ("columns", "run-config", "resources")  # from the definitions alone
ALL_SECTIONS = FAST_SECTIONS + ("lineage",)


def load_defs():
    warnings.filterwarnings("ignore")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from sora_pipeline.definitions import defs

    return defs


def table_specs(defs) -> dict[str, object]:
    """table name → the asset spec that carries its column schema, in ORDER (unknown tables last, by name)."""
    specs = {}
    for spec in defs.resolve_all_asset_specs():
        metadata = spec.metadata or {}
        if metadata.get("dagster/column_schema") is not None:
            specs[str(metadata.get("dagster/table_name") or spec.key.to_user_string())] = spec
    rank = {name: i for i, name in enumerate(ORDER)}
    return dict(sorted(specs.items(), key=lambda kv: (rank.get(kv[0], len(ORDER)), kv[0])))


def schema_columns(spec) -> list[tuple[str, str, str]]:
    """(name, Dagster type, description) of an asset's `dagster/column_schema`."""
    schema = spec.metadata["dagster/column_schema"]
    schema = getattr(schema, "schema", schema)  # a TableSchemaMetadataValue or the TableSchema itself
    return [(c.name, c.type, c.description or "") for c in schema.columns]


def table_defs() -> dict[str, object]:
    """The loaded table definitions (objects with a pyarrow `arrow_schema`, a `name` and `columns`) by name."""
    import pyarrow as pa

    found: dict[str, object] = {}
    for name, module in sorted(sys.modules.items()):
        if not name.startswith("sora_pipeline") or module is None:
            continue
        for value in list(vars(module).values()):
            if isinstance(value, type):
                continue
            try:
                schema, table_name, columns = value.arrow_schema, value.name, value.columns
            except Exception:
                continue
            if isinstance(schema, pa.Schema) and isinstance(table_name, str) and isinstance(columns, tuple):
                found.setdefault(table_name, value)
    return found


def md(text: str) -> str:
    """A Markdown table cell: pipes escaped, tag-like `<word>` kept visible."""
    text = re.sub(r"\s+", " ", str(text)).strip().replace("|", "\\|")
    return re.sub(r"<(?=[A-Za-z/])", "&lt;", text)


def columns_section(defs) -> str:
    tables = table_defs()
    out = []
    for name, spec in table_specs(defs).items():
        table = tables.get(name)
        described = {c: d for c, _, d in schema_columns(spec)}
        if table is not None:
            fields = list(table.arrow_schema)
            if [f.name for f in fields] != list(described):
                raise SystemExit(f"{name}: the table definition's columns differ from the asset's column schema")
            rows = [(f.name, str(f.type), described[f.name]) for f in fields]
            title = getattr(table, "description", "") or ""
        else:  # no table definition found by shape: Dagster's coarser types
            rows = schema_columns(spec)
            title = ""
        kinds = ", ".join(sorted(spec.kinds or ()))
        part = "daily, one Parquet file set per `date=YYYY-MM-DD`" if spec.partitions_def else "not partitioned"
        out.append(f"#### `{name}`\n\n{md(title)}{'. ' if title else ''}Asset `{spec.key.to_user_string()}` "
                   f"({part}; {kinds}).\n\n| column | type | meaning |\n|---|---|---|")
        out.extend(f"| `{c}` | {md(t)} | {md(d)} |" for c, t, d in rows)
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _type_name(config_type) -> str:
    inner = getattr(config_type, "inner_type", None)
    base = inner if inner is not None else config_type
    name = (getattr(base, "given_name", None) or getattr(base, "key", None) or str(base))
    name = {"BoolSourceType": "bool", "IntSourceType": "int", "StringSourceType": "str", "Float": "float",
            "Int": "int", "Bool": "bool", "String": "str"}.get(name, name)
    return name + (" or null" if inner is not None else "")


def run_config_class(defs):
    """The `dg.Config` class of the `generations` step (its compute function's `config` parameter), or None."""
    import inspect

    fn = defs.resolve_assets_def("generations").op.compute_fn
    fn = getattr(fn, "decorated_fn", fn)
    param = inspect.signature(fn).parameters.get("config")
    annotation = None if param is None else param.annotation
    return annotation if isinstance(annotation, type) and hasattr(annotation, "model_fields") else None


def _limits(info) -> str:
    out = []
    for item in info.metadata:
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            if getattr(item, attr, None) is not None:
                out.append(f"{sign} {getattr(item, attr)}")
    return f" ({', '.join(out)})" if out else ""


def run_config_section(defs) -> str:
    rows = ["| field | type | default | meaning |", "|---|---|---|---|"]
    config = run_config_class(defs)
    if config is not None:
        for name, info in config.model_fields.items():
            rows.append(f"| `{name}` | {md(_annotation(info.annotation))}{_limits(info)} | `{_default(info)}` | "
                        f"{md(info.description or '')} |")
        return "\n".join(rows) + "\n"
    fields = defs.resolve_assets_def("generations").op.config_schema.config_type.fields
    for name, field in fields.items():
        default = repr(field.default_value) if field.default_provided else ("required" if field.is_required else "—")
        default = {"None": "null", "False": "false", "True": "true"}.get(default, default)
        rows.append(f"| `{name}` | {_type_name(field.config_type)} | `{default}` | {md(field.description or '')} |")
    return "\n".join(rows) + "\n"


def _default(info) -> str:
    if info.is_required():  # e.g. a nested resource
        return "required"
    default = info.default_factory() if info.default_factory is not None else info.default
    if isinstance(default, (bool, type(None))):
        return {None: "null", True: "true", False: "false"}[default]
    return str(default)


def _annotation(annotation) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    text = text or str(annotation).replace("typing.", "")
    return text.replace("NoneType", "None")


def resources_section(defs) -> str:
    rows = ["| resource | field | type | default | meaning |", "|---|---|---|---|---|"]
    for key, resource in sorted(defs.resources.items()):
        model = type(resource)
        for name, info in model.model_fields.items():
            rows.append(f"| `{key}` ({model.__name__}) | `{name}` | {md(_annotation(info.annotation))}"
                        f"{_limits(info)} | `{_default(info)}` | {md(info.description or '')} |")
    return "\n".join(rows) + "\n"


def lineage_section(defs, keep: bool = False) -> str:
    """Runs the demo in a temporary instance and reads each table's recorded `dagster/column_lineage`."""
    import dagster as dg

    tmp = Path(tempfile.mkdtemp(prefix="sora-reference-"))
    try:
        home = tmp / "dagster_home"
        home.mkdir()
        shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
        env = {k: v for k, v in os.environ.items() if k not in SECRETS}
        env.update(DAGSTER_HOME=str(home), SORA_CATALOG_URI=str(ROOT / "data" / "catalog"),
                   SORA_WAREHOUSE_URI=str(tmp / "warehouse"), SORA_POLL_INTERVAL="0.2")
        proc = subprocess.run([sys.executable, "-m", "sora_pipeline.demo"], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=900)
        if proc.returncode != 0:
            raise SystemExit(f"the demo failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        out, seen = [], {}
        with dg.DagsterInstance.from_config(str(home)) as instance:
            for name, spec in table_specs(defs).items():
                event = instance.get_latest_materialization_event(spec.key)
                value = None if event is None else event.asset_materialization.metadata.get("dagster/column_lineage")
                lineage = getattr(value, "column_lineage", value)
                if lineage is None:
                    out.append(f"#### `{name}`\n\nNo column lineage recorded.\n")
                    continue
                deps = {col: [f"`{d.asset_key.to_user_string()}.{d.column_name}`" for d in ds]
                        for col, ds in lineage.deps_by_column.items() if ds}
                order = [c for c, _, _ in schema_columns(spec)]
                unlisted = [c for c in order if c not in deps]
                none = f"No recorded source: {', '.join(f'`{c}`' for c in unlisted)}." if unlisted else ""
                key = tuple(sorted((c, tuple(d)) for c, d in deps.items()))
                if key in seen:
                    out.append(f"#### `{name}`\n\nThe same as `{seen[key]}` for the columns they share. {none}\n")
                    continue
                seen[key] = name
                rows = sorted(deps.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))
                out.append(f"#### `{name}`\n\n| column | derives from |\n|---|---|")
                out.extend(f"| `{c}` | {', '.join(d)} |" for c, d in rows)
                if none:
                    out.append(f"\n{none}")
                out.append("")
        return "\n".join(out).rstrip() + "\n"
    finally:
        if keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


BUILDERS = {"columns": columns_section, "run-config": run_config_section, "resources": resources_section,
            "lineage": lineage_section}


def _pattern(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- generated:{re.escape(name)} [^\n]*-->\n)(.*?)(<!-- /generated:{re.escape(name)} -->)",
                      re.S)


def current(text: str, name: str) -> str | None:
    m = _pattern(name).search(text)
    return None if m is None else m.group(2)


def replace(text: str, name: str, body: str) -> str:
    pattern = _pattern(name)
    if not pattern.search(text):
        raise SystemExit(f"{REFERENCE}: no <!-- generated:{name} … --> section")
    return pattern.sub(lambda m: m.group(1) + "\n" + body + "\n" + m.group(3), text, count=1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", action="store_true", help="rewrite every generated section of docs/reference.md")
    group.add_argument("--check", action="store_true", help="exit 1 if a section built from the definitions "
                                                            "alone (columns, run config, resources) is stale")
    group.add_argument("--print", choices=sorted(BUILDERS), help="print one section")
    ap.add_argument("--reference", default=str(REFERENCE))
    args = ap.parse_args(argv)
    path = Path(args.reference)
    defs = load_defs()
    if args.print:
        print(BUILDERS[args.print](defs), end="")
        return 0
    text = path.read_text()
    if args.check:
        stale = [name for name in FAST_SECTIONS if (current(text, name) or "").strip() != BUILDERS[name](defs).strip()]
        if stale:
            print(f"{path}: stale generated section(s): {', '.join(stale)}; run `make reference`", file=sys.stderr)
            return 1
        print(f"{path}: generated sections are current ({', '.join(FAST_SECTIONS)})")
        return 0
    for name in ALL_SECTIONS:
        text = replace(text, name, BUILDERS[name](defs))
    path.write_text(text)
    print(f"{path}: rewrote {', '.join(ALL_SECTIONS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
