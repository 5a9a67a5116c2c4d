"""HTML pages that stay readable anywhere: the page helpers and the training report (a train stage output).

Each page is one self-contained file: inline CSS, plots as base64 PNG data: URIs, no script, font or link
to anything outside the page (and a Content-Security-Policy that forbids them, should one ever slip in). A Domino artifact, an MLflow run, an e-mail attachment and a run directory
copied elsewhere all show the same thing, and a reader never needs network access. The run report
(stageflow.run_report, host-side) is built from the same helpers.

Every value a page shows comes from a file that someone else may have written (run.json, the metrics, the
labels in the data), so it is text: the helpers escape whatever is not `Html`, and Html is made only from
literal templates, whose `format` escapes what it fills in.

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
import string
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import quote

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


# No script and nothing fetched, whatever markup a page turns out to hold: inline styles and data: images only.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


class Html(str):
    """Markup that is safe as it stands. Anything else is text, escaped wherever it enters markup: the values
    `format` fills into a template and the items `join` joins are escaped unless they are Html themselves."""

    def format(self, *args: Any, **kwargs: Any) -> Html:
        return Html(_ESCAPING.vformat(self, args, kwargs))

    def join(self, parts: Iterable[Any]) -> Html:
        return Html(str.join(self, map(escape, parts)))


class _Escaping(string.Formatter):
    def format_field(self, value: Any, spec: str) -> str:
        return value if isinstance(value, Html) and not spec else html.escape(format(value, spec))


_ESCAPING = _Escaping()


def escape(value: Any) -> str:
    return value if isinstance(value, Html) else html.escape(str(value))


def fmt(value: Any, spec: str = "") -> str:
    """A value as text, with a dash (never `None`) for one that is missing."""
    if value is None:
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    return format(value, spec)


def link(path: str, text: Any) -> Html:
    """A link to a file beside the page. The path is percent-encoded, so no part of it can become a scheme
    (javascript:), a host, a query or a fragment, whatever names a run record gives its files."""
    if path.startswith("/"):
        raise ValueError(f"link to {path!r}: a report links only to paths relative to it")
    return Html('<a href="{}">{}</a>').format(quote(path), text)


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Iterable[int] = ()) -> Html:
    """A table; columns listed in `numeric` are right-aligned so digits line up."""
    numeric = set(numeric)

    def cells(tag: str, row: Sequence[Any]) -> Html:
        return Html("").join(Html("<{0}{1}>{2}</{0}>").format(tag, Html(" class=num") if i in numeric else "", cell)
                             for i, cell in enumerate(row))

    body = Html("").join(Html("<tr>{}</tr>").format(cells("td", row)) for row in rows)
    return Html("<table><thead><tr>{}</tr></thead><tbody>{}</tbody></table>").format(cells("th", header), body)


def cards(items: Iterable[tuple[str, Any]]) -> Html:
    """The headline figures, large, at the top of a page."""
    card = Html('<div class="card"><div class="label">{}</div><div class="value">{}</div></div>')
    return Html('<div class="cards">{}</div>').format(Html("").join(card.format(*item) for item in items))


def section(heading: str, *parts: Any) -> Html:
    return Html("<section><h2>{}</h2>{}</section>").format(heading, Html("").join(parts))


def page(title: str, subtitle: str, *sections: Any) -> str:
    return Html("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
                '<meta http-equiv="Content-Security-Policy" content="{csp}">'
                '<meta name=viewport content="width=device-width, initial-scale=1">'
                "<title>{title}</title><style>{css}</style></head>\n"
                "<body><main><h1>{title}</h1><p class=subtitle>{subtitle}</p>\n{body}\n</main></body></html>\n"
                ).format(csp=CSP, css=Html(CSS), title=title, subtitle=subtitle, body=Html("\n").join(sections))


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
    return Html('<figure><img src="{0}" alt="{1}"><figcaption>{1}</figcaption></figure>').format(uri, caption)


def plain(labels: Iterable[Any]) -> list[str]:
    """Labels that matplotlib prints as they are: a `$` would start mathtext, and a class named `$\\x{$` would
    then fail the whole report."""
    return [str(label).replace("$", r"\$") for label in labels]


def confusion_plot(classes: Sequence[str], matrix: Sequence[Sequence[int]]) -> str:
    fig = _figure(4.6, 3.9)
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax, shrink=0.8)
    ticks = range(len(classes))
    ax.set_xticks(ticks, plain(classes), rotation=20)
    ax.set_yticks(ticks, plain(classes))
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
    for k, (per_class, label) in enumerate(zip(counts.values(), plain(counts))):
        xs = [i + (k - (len(counts) - 1) / 2) * width for i in range(len(classes))]
        bars = ax.bar(xs, [per_class.get(c, 0) for c in classes], width, label=label)
        ax.bar_label(bars, fontsize=9)
    ax.set_xticks(range(len(classes)), plain(classes))
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
    model = Html("<p>Model sha256: <code>{}</code></p>").format(metrics.get("model_sha256", DASH))
    return page("Training report", f"{metrics.get('n_train', DASH)} training rows, {metrics.get('n_test', DASH)} "
                                   f"hold-out rows, {len(classes)} classes",
                headline,
                section("Hold-out metrics per class", scores),
                section("Plots", Html('<div class="plots">{}</div>').format(Html("").join(plots))),
                section("Class balance", balance) if counts else "",
                section("Training parameters", parameters, model))
