"""The run report (`stageflow report`, and at the end of every `stageflow run`): the whole run on one page.

It is host-side: stages never draw it. It shares the page helpers of the training report
(stageflow.runtime.report), so both look alike and stay self-contained.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import quote

from stageflow import files
from stageflow.runtime.report import DASH, Html, cards, fmt, link, page, section, svg, table, text


def rows_cell(stage: Mapping[str, Any]) -> str:
    """Rows in → out of one stage's record, a dash when the record does not count them."""
    rows_in, rows_out = stage.get("rows_in"), stage.get("rows_out")
    if rows_in is None and rows_out is None:
        return DASH
    return f"{fmt(rows_in, ',')} → {fmt(rows_out, ',')}"


def seconds(stage: Mapping[str, Any]) -> float | None:
    """A stage's duration; none for one that never ran (the record says 0 for a skipped stage)."""
    return None if stage.get("status") in ("skipped", "pending") else stage.get("seconds")


BOX_W, BOX_H, COL_W, ROW_H, PAD = 184, 58, 234, 78, 16
FILL = {"succeeded": ("#dafbe1", "#1a7f37"), "failed": ("#ffebe9", "#cf222e"), "running": ("#fff8c5", "#9a6700")}
GREY = ("#eaeef2", "#59636e")


def layers(order: Sequence[str], edges: Iterable[tuple[str, str]]) -> dict[str, int]:
    """Each stage's column: one past its deepest upstream stage, so every edge points right."""
    upstream: dict[str, list[str]] = {name: [] for name in order}
    for src, dst in edges:
        upstream[dst].append(src)
    depth: dict[str, int] = {}

    def visit(name: str) -> int:
        if name not in depth:
            depth[name] = 1 + max((visit(up) for up in upstream[name]), default=-1)
        return depth[name]

    for name in order:
        visit(name)
    return depth


def dag_svg(order: Sequence[str], edges: Sequence[tuple[str, str]], stages: Mapping[str, Mapping[str, Any]]) -> Html:
    """The DAG as inline SVG (no script, no layout library): columns by depth, a box per stage coloured by
    status, each box a link to its row in the stage table."""
    depth = layers(order, edges)
    columns: dict[int, list[str]] = {}
    for name in order:
        columns.setdefault(depth[name], []).append(name)
    tallest = max((len(names) for names in columns.values()), default=1)
    pos = {name: (PAD + col * COL_W, PAD + (tallest - len(names)) * ROW_H / 2 + i * ROW_H)
           for col, names in columns.items() for i, name in enumerate(names)}  # each column centred
    width = PAD * 2 + max(columns, default=0) * COL_W + BOX_W
    height = PAD * 2 + (tallest - 1) * ROW_H + BOX_H
    parts = [Html('<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
                  'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#8c959f"/></marker></defs>')]
    for src, dst in edges:
        (x1, y1), (x2, y2) = pos[src], pos[dst]
        x1, y1, y2 = x1 + BOX_W, y1 + BOX_H / 2, y2 + BOX_H / 2
        mid = (x1 + x2) / 2
        parts.append(Html('<path d="M {} {} C {} {}, {} {}, {} {}" fill="none" stroke="#8c959f" stroke-width="1.5" '
                          'marker-end="url(#arrow)"/>').format(x1, y1, mid, y1, mid, y2, x2 - 2, y2))
    for name in order:
        x, y = pos[name]
        stage = stages.get(name, {})
        status = stage.get("status", "pending")
        fill, ink = FILL.get(status, GREY)
        detail = status + (f" · {seconds(stage):.1f} s" if seconds(stage) is not None else "")
        detail += " · cached" if stage.get("cached") else ""
        tip = Html("<title>{}</title>").format(stage["error"]) if stage.get("error") else ""
        parts.append(Html('<a href="#stage-{name}">{tip}<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="8" '
                          'fill="{fill}" stroke="{ink}" stroke-width="1.5"/>{title}{detail}</a>').format(
            name=name, tip=tip, x=x, y=y, w=BOX_W, h=BOX_H, fill=fill, ink=ink,
            title=text(x + BOX_W / 2, y + 24, name, size=15, width=BOX_W - 12, bold=True),
            detail=text(x + BOX_W / 2, y + 44, detail, fill=ink)))
    return svg(width, height, "flow DAG", parts, "dag")


def when(stamp: str | None) -> str:
    try:
        return dt.datetime.fromisoformat(stamp).strftime("%Y-%m-%d %H:%M:%S %Z")
    except (TypeError, ValueError):
        return DASH


def wall_time(record: Mapping[str, Any]) -> str:
    try:
        seconds = (dt.datetime.fromisoformat(record["finished_at"])
                   - dt.datetime.fromisoformat(record["started_at"])).total_seconds()
    except (KeyError, TypeError, ValueError):
        return DASH
    return f"{seconds:.0f} s"


def published(record: Mapping[str, Any]) -> dict[str, Mapping[str, str]]:
    """The record's flow outputs, {name: {"path", "sha256"}}; an older run.json's bare paths are left out."""
    return {name: output for name, output in record.get("outputs", {}).items()
            if isinstance(output, Mapping) and "path" in output}


def json_field(run_dir: Path, record: Mapping[str, Any], key: str) -> dict[str, dict[str, Any]]:
    """The object under `key` in each JSON flow output that has one (the stage that writes the output decides
    what it holds), read from the run directory's outputs/ wherever the directory now is."""
    found = {}
    for name, output in published(record).items():
        path = Path(run_dir) / "outputs" / Path(output["path"]).name
        if path.suffix != ".json":
            continue
        try:
            value = json.loads(files.read_bytes(path, f"flow output {name}")).get(key)
        except (OSError, ValueError, AttributeError, files.UnsafeFile):
            continue
        if isinstance(value, dict) and value:
            found[name] = value
    return found


def headlines(run_dir: Path, record: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The `headline` of each JSON flow output that has one: what the summary and the report show of it."""
    return json_field(run_dir, record, "headline")


def trackings(run_dir: Path, record: Mapping[str, Any], dag) -> dict[str, tuple[dict[str, Any], str | None]]:
    """The `tracking` record of each JSON flow output that has one (train's metrics: where MLflow logged the
    run), with the task that wrote the output when it was reused from the cache rather than run."""
    found = {}
    for name, tracked in json_field(run_dir, record, "tracking").items():
        source = dag.outputs.get(name)
        producer = source.stage if source else None
        cached = producer if producer and record.get("stages", {}).get(producer, {}).get("cached") else None
        found[name] = (tracked, cached)
    return found


def outputs_section(record: Mapping[str, Any]) -> Html:
    """Links to the flow's outputs, as outputs/<name>.<format>: a browser opens each by its extension."""
    outputs = published(record)
    if not outputs:
        return section("Outputs", Html("<p>No outputs: the flow did not finish.</p>"))
    rows = []
    for name, output in outputs.items():
        file = Path(output["path"]).name
        extension = file.rsplit(".", 1)[1] if "." in file else ""
        target = link(f"outputs/{file}", file) if extension in SHOWN else Html(
            '<a href="{}" download="{}">{}</a> ({}, downloads)').format(quote(f"outputs/{file}"), file, file,
                                                                       KINDS.get(extension, "file"))
        rows.append((name, target, Html("<span class=mono>{}</span>").format(output.get("sha256", ""))))
    return section("Outputs", table(["output", "file", "sha256"], rows))


# What a stage's output file is, by the format its task declares: a browser shows few of them, so the report
# says what a link will download.
KINDS = {"parquet": "Parquet table", "skops": "skops model", "pkl": "Python pickle", "json": "JSON",
         "html": "HTML page", "csv": "CSV table", "txt": "text"}
SHOWN = {"json", "html", "txt", "csv"}  # what a browser opens as a page when its name says what it is


def output_cell(folder: str, name: str, digest: str, extension: str | None, copies: Mapping[str, str]) -> Html:
    """A stage output in the stage table. The file in the stage's folder has the bare name the contract gives
    it (no extension), so a browser cannot tell what it is: a flow output links to its published copy
    (outputs/<name>.<format>, which it opens by its extension); any other link downloads under a name with
    its extension, and says what the file is."""
    kind = KINDS.get(extension or "", f"{extension} file" if extension else "file")
    if digest in copies and extension in SHOWN:
        target, what = link(f"outputs/{copies[digest]}", name), ""
    else:
        path = f"outputs/{copies[digest]}" if digest in copies else f"{folder}/outputs/{name}"
        target = Html('<a href="{}" download="{}">{}</a>').format(quote(path), f"{name}.{extension}" if extension
                                                                  else name, name)
        what = f" ({kind}, downloads)"
    return Html('<span class=nowrap>{}{} <span class=mono>{}</span></span>').format(target, what, digest[:12])


def run_report(record: Mapping[str, Any], order: Sequence[str], edges: Sequence[tuple[str, str]],
               shown: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """The whole run on one page. Links are relative to the run directory (the runner's layout:
    logs/<stage>.log, <stage>/outputs/<name>, outputs/<name>.<format>), so the directory can be moved or
    zipped whole. `shown` holds the headline of each flow output that has one (see `headlines`)."""
    shown = shown or {}
    stages = record.get("stages", {})
    copies = {output.get("sha256"): Path(output["path"]).name for output in published(record).values()}
    errors = any(stages.get(name, {}).get("error") for name in order)
    rows = []
    for name in order:
        stage = stages.get(name, {})
        status = stage.get("status", "pending")
        folder = stage.get("folder") or name
        formats = stage.get("formats", {})
        outputs = Html("<br>").join(output_cell(folder, out, digest, formats.get(out), copies)
                                    for out, digest in stage.get("outputs", {}).items()) or DASH
        row = [Html('<span id="stage-{0}">{0}</span>').format(name),
               Html('<span class="status {0}">{0}</span>').format(status),
               fmt(seconds(stage), ".2f"), fmt(stage.get("peak_rss_mb"), ",.0f"), rows_cell(stage),
               fmt(stage.get("cached")), link(f"logs/{folder}.log", f"{folder}.log") if stage.get("log") else DASH,
               outputs]
        rows.append(row + [Html('<span class="error">{}</span>').format(stage.get("error") or "")] * errors)
    header = ["stage", "status", "seconds", "peak MB", "rows in → out", "cached", "log", "outputs"]
    stage_table = table(header + ["error"] * errors, rows, numeric=(2, 3))
    head = [("status", record.get("status", DASH)), ("wall time", wall_time(record))]
    head += [(label if len(shown) == 1 else f"{output}: {label}", fmt(value))
             for output, headline in shown.items() for label, value in headline.items()]
    params = table(["input", "value"], record.get("params", {}).items())
    subtitle = (f"flow {record.get('flow', DASH)} on the {record.get('backend', DASH)} backend, "
                f"{when(record.get('started_at'))} to {when(record.get('finished_at'))}")
    return page("Run report", subtitle, cards(head),
                outputs_section(record),
                section("Stages", dag_svg(order, edges, stages), stage_table),
                section("Flow inputs", params, Html("<p>Record: {}</p>").format(link("run.json", "run.json"))))
