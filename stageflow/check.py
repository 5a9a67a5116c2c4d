"""`stageflow check-schema`: try a schema on your own files before running the flow.

Each file goes through the stages' own code, in this process and in a temporary directory: load (read,
check the columns and types against the schema, check the key) and then process (drop columns, spell the
labels by the schema's rules, refuse labels outside the declared classes). So a file that passes here passes
the same checks in the flow, and a file that fails gets the problem the flow would stop with. Nothing is
trained, and the files are only read. (Whether two sources disagree on a key is merge's check, in the flow.)
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pyarrow.compute as pc

from stageflow import registry
from stageflow.runtime import contract, dataset, schema as schemas, sources


def describe(schema: schemas.Schema) -> str:
    """The schema in a few lines, as the stages will apply it."""
    labels = f"match {schema.match}"
    if schema.strip_prefixes:
        labels += f", prefixes {', '.join(repr(p) for p in schema.strip_prefixes)} stripped"
    labels += (f", classes {', '.join(schema.classes)}" if schema.classes
               else ", classes learnt from the data (label.classes not set)")
    lines = [f"schema {schema.path}",
             f"  key       {schema.key} ({schema.key_type})",
             f"  features  {len(schema.features)}: {dataset.listed(list(schema.features), 6)}",
             f"  label     {schema.label} ({labels})"]
    if schema.dropped:
        lines.append(f"  dropped   {', '.join(schema.dropped)}")
    return "\n".join(lines)


def check_file(path: Path, work: Path, process) -> str:
    """Load `path` and process its snapshot as the flow would; a summary of what training would get."""
    load, clean = contract.StageTree(work / "load"), contract.StageTree(work / "process")
    load.inputs.mkdir(parents=True)
    load.inputs.joinpath("data_path").write_text(str(path.absolute()))
    sources.load(load, "snapshot")
    clean.inputs.mkdir(parents=True)
    os.link(load.outputs / "snapshot", clean.inputs / "merged_data")
    process.process(clean)
    snapshot = dataset.Snapshot(clean.outputs / "processed_data", "processed_data")
    counts: dict[str, int] = {}
    for table in snapshot.tables():
        for entry in pc.value_counts(table.column(schemas.active().label)).to_pylist():
            counts[entry["values"]] = counts.get(entry["values"], 0) + entry["counts"]
    labels = ", ".join(f"{label} {n}" for label, n in sorted(counts.items()))
    dropped = snapshot.meta["dropped_by"]
    why = f" (dropped: {process.dropped_words(dropped)})" if dropped else ""
    return f"{snapshot.meta['dropped'] + snapshot.num_rows} rows, {snapshot.num_rows} usable{why}; labels: {labels}"


def _without_input(line: str, path: Path) -> str:
    """A stage's error line without the input it names (the file, already shown)."""
    for prefix in (f"input data_path: {path.absolute()}: ", f"input data_path: {path.absolute()} ",
                   "input merged_data: "):
        if line.startswith(prefix):
            return line[len(prefix):]
    return line


def check(paths: list[Path]) -> int:
    """Check each file against the active schema; 0 when all pass, 1 when any fails, 2 for a bad schema."""
    try:
        schema = schemas.active()
    except schemas.SchemaError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(describe(schema))
    process = registry.stage("process").module()
    failed = 0
    for path in paths:
        with tempfile.TemporaryDirectory(prefix="stageflow-check-") as work:
            try:
                print(f"ok     {path}: {check_file(path, Path(work), process)}")
            except Exception as err:  # noqa: BLE001 - any failure is this file's, in one line
                print(f"error  {path}: {_without_input(contract.one_line(err), path)}")
                failed += 1
    if failed:
        print(f"{failed} of {len(paths)} file(s) do not fit the schema; fix the file or the schema "
              f"({schema.path}) and check again")
    return 1 if failed else 0
