"""HTML pages that stay readable anywhere: the page helpers and the training report (a train stage output).

Each page is one self-contained file: inline CSS, plots as base64 PNG data: URIs, no script, font or link
to anything outside the page. A Domino artifact, an MLflow run, an e-mail attachment and a run directory
copied elsewhere all show the same thing, and a reader never needs network access. The run report
(stageflow.run_report, host-side) is built from the same helpers.

matplotlib is imported only when a plot is drawn: importing it costs a second that a page without plots
does not need.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

MPL_CACHE_ENV = "STAGEFLOW_MPL_CACHE"  # a font cache made when the image was built (stages/train/Dockerfile)
DASH = "–"  # shown for a value a record does not carry (an older run.json, a stage that never ran)

CSS = """
:root { --ink: #1f2328; --muted: #59636e; --line: #d1d9e0; --soft: #f6f8fa; --accent: #0969da; }
* { box-sizing: border-box; }
body { margin: 0; padding: 24px 32px 48px; color: var(--ink); background: #fff;
       font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
main { max-width: 1100px; margin: 0 auto; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 28px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
.subtitle { color: var(--muted); margin: 0 0 16px; }
code, .mono { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12.5px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px 16px; min-width: 140px; background: var(--soft); }
.card .label { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.card .value { font-size: 22px; font-weight: 600; }
table { border-collapse: collapse; margin: 4px 0; }
th, td { border-bottom: 1px solid var(--line); padding: 5px 12px 5px 0; text-align: left; vertical-align: top; }
th { color: var(--muted); font-weight: 600; font-size: 12.5px; white-space: nowrap; }
.nowrap { white-space: nowrap; }
td.num, th.num { text-align: right; padding-right: 16px; font-variant-numeric: tabular-nums; }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(320px, 1fr)); gap: 16px; }
figure { margin: 0; border: 1px solid var(--line); border-radius: 8px; padding: 8px; }
figure img { width: 100%; height: auto; display: block; }
figcaption { color: var(--muted); font-size: 12.5px; margin-top: 4px; }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
.status { display: inline-block; border-radius: 10px; padding: 0 8px; font-size: 12px; font-weight: 600; }
.succeeded { background: #dafbe1; color: #1a7f37; } .failed { background: #ffebe9; color: #cf222e; }
.skipped, .pending { background: #eaeef2; color: #59636e; } .running { background: #fff8c5; color: #9a6700; }
.error { color: #cf222e; max-width: 420px; }
svg.dag text { font-family: inherit; }
"""


class Html(str):
    """Markup that is already safe; every other value is escaped on its way into a page."""


def escape(value: Any) -> str:
    return value if isinstance(value, Html) else html.escape(str(value))


def fmt(value: Any, spec: str = "") -> str:
    """A value as text, with a dash (never `None`) for one that is missing."""
    if value is None:
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    return format(value, spec)




def link(href: str, text: Any) -> Html:
    return Html(f'<a href="{html.escape(href)}">{escape(text)}</a>')


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Iterable[int] = ()) -> Html:
    """A table; columns listed in `numeric` are right-aligned so digits line up."""
    numeric = set(numeric)

    def cells(tag: str, row: Sequence[Any]) -> str:
        return "".join(f'<{tag}{" class=num" if i in numeric else ""}>{escape(c)}</{tag}>' for i, c in enumerate(row))

    body = "".join(f"<tr>{cells('td', row)}</tr>" for row in rows)
    return Html(f"<table><thead><tr>{cells('th', header)}</tr></thead><tbody>{body}</tbody></table>")


def cards(items: Iterable[tuple[str, Any]]) -> Html:
    """The headline figures, large, at the top of a page."""
    return Html('<div class="cards">' + "".join(
        f'<div class="card"><div class="label">{escape(label)}</div><div class="value">{escape(value)}</div></div>'
        for label, value in items) + "</div>")


def section(heading: str, *parts: str) -> Html:
    return Html(f"<section><h2>{escape(heading)}</h2>{''.join(parts)}</section>")


def page(title: str, subtitle: str, *sections: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            '<meta name=viewport content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{CSS}</style></head>\n"
            f"<body><main><h1>{escape(title)}</h1><p class=subtitle>{escape(subtitle)}</p>\n"
            + "\n".join(sections) + "\n</main></body></html>\n")


def write(path: Path, text: str) -> None:
    """Write beside the target and rename, so a browser refresh never shows half a report."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


# ---------------------------------------------------------------- plots

def _writable_dir(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def ensure_mpl_config_dir() -> None:
    """Point matplotlib at a temporary config/cache dir when its defaults (under $HOME) cannot be written,
    or when the image holds a font cache made at build time (MPL_CACHE_ENV).

    Stage containers run as uid 12574 with no home and a read-only root; matplotlib would then warn on
    every run and fall back on its own. Saying so up front keeps the log clean. In a fresh container it
    would also rebuild its font list (0.5-0.8 s); it refuses a read-only cache dir, so the image's is copied.
    """
    if os.environ.get("MPLCONFIGDIR"):
        return
    baked = os.environ.get(MPL_CACHE_ENV)
    if baked and os.path.isdir(baked):
        os.environ["MPLCONFIGDIR"] = str(shutil.copytree(baked, Path(tempfile.mkdtemp(prefix="matplotlib-")) / "mpl"))
        return
    try:
        home = Path.home()
    except RuntimeError:  # no HOME and no passwd entry for this uid
        home = None
    defaults = [] if home is None else [
        Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "matplotlib",
        Path(os.environ.get("XDG_CACHE_HOME") or home / ".cache") / "matplotlib"]
    if not defaults or not all(_writable_dir(p) for p in defaults):
        os.environ["MPLCONFIGDIR"] = tempfile.mkdtemp(prefix="matplotlib-")


def _figure(width: float, height: float):
    ensure_mpl_config_dir()
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # not its font-cache chatter in the stage log
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_uri(fig) -> str:
    buffer = io.BytesIO()
    # 1.5x the CSS size, sharp on high-density screens; no version string, so the same data gives the same bytes
    fig.savefig(buffer, format="png", dpi=150, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def figure(uri: str, caption: str) -> Html:
    return Html(f'<figure><img src="{uri}" alt="{html.escape(caption)}"><figcaption>{escape(caption)}'
                "</figcaption></figure>")


def confusion_plot(classes: Sequence[str], matrix: Sequence[Sequence[int]]) -> str:
    fig = _figure(4.6, 3.9)
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax, shrink=0.8)
    ticks = range(len(classes))
    ax.set_xticks(ticks, classes, rotation=20)
    ax.set_yticks(ticks, classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = max((max(row) for row in matrix), default=0)
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=12,
                    color="white" if count > top / 2 else "#1f2328")
    return png_uri(fig)


def loss_plot(losses: Sequence[float]) -> str:
    fig = _figure(4.6, 3.9)
    ax = fig.add_subplot()
    epochs = range(1, len(losses) + 1)
    ax.plot(epochs, losses, marker="o" if len(losses) <= 50 else None, color="#0969da")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (mean over batches)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    if len(losses) <= 20:
        ax.set_xticks(list(epochs))
    return png_uri(fig)


def balance_plot(counts: Mapping[str, Mapping[str, int]]) -> str:
    """Rows per class in each split, side by side: a skewed split or a rare class shows at a glance."""
    fig = _figure(4.6, 3.9)
    ax = fig.add_subplot()
    classes = sorted({c for split in counts.values() for c in split})
    width = 0.8 / max(len(counts), 1)
    for k, (split, per_class) in enumerate(counts.items()):
        xs = [i + (k - (len(counts) - 1) / 2) * width for i in range(len(classes))]
        bars = ax.bar(xs, [per_class.get(c, 0) for c in classes], width, label=split)
        ax.bar_label(bars, fontsize=9)
    ax.set_xticks(range(len(classes)), classes)
    ax.set_ylabel("rows")
    ax.legend(frameon=False, ncols=len(counts), loc="lower center", bbox_to_anchor=(0.5, 1.0))
    ax.margins(y=0.1)
    return png_uri(fig)


# ---------------------------------------------------------------- the training report

def training_report(metrics: Mapping[str, Any], params: Mapping[str, Any]) -> str:
    """The page a data scientist opens after training: is the model good, and what was it trained on?"""
    classes = metrics["classes"]
    per_class = metrics["per_class"]
    losses = metrics["loss_per_epoch"]
    counts = metrics.get("class_counts", {})
    headline = cards([("accuracy", f"{metrics['accuracy']:.3f}"), ("macro F1", f"{metrics['macro_f1']:.3f}"),
                      ("test rows", metrics.get("n_test", DASH)), ("epochs", len(losses)),
                      ("final loss", f"{losses[-1]:.4f}" if losses else DASH)])
    scores = table(["class", "precision", "recall", "F1", "support"],
                   [(c, f"{per_class[c]['precision']:.3f}", f"{per_class[c]['recall']:.3f}",
                     f"{per_class[c]['f1']:.3f}", per_class[c]["support"]) for c in classes], numeric=range(1, 5))
    balance = table(["class", *counts], [(c, *(split.get(c, 0) for split in counts.values())) for c in classes],
                    numeric=range(1, len(counts) + 1)) if counts else Html("")
    plots = [figure(confusion_plot(classes, metrics["confusion_matrix"]), "Confusion matrix on the hold-out set"),
             figure(loss_plot(losses), "Loss per epoch")]
    if counts:
        plots.append(figure(balance_plot(counts), "Class balance of the data, per split"))
    parameters = table(["parameter", "value"], [(k, ", ".join(map(str, v)) if isinstance(v, list) else fmt(v))
                                                for k, v in params.items()])
    model = Html(f"<p>Model sha256: <code>{escape(metrics.get('model_sha256', DASH))}</code></p>")
    return page("Training report", f"{metrics.get('n_train', DASH)} training rows, {metrics.get('n_test', DASH)} "
                                   f"hold-out rows, {len(classes)} classes",
                headline,
                section("Hold-out metrics per class", scores),
                section("Plots", Html(f'<div class="plots">{"".join(plots)}</div>')),
                section("Class balance", balance) if counts else "",
                section("Training parameters", parameters, model))
