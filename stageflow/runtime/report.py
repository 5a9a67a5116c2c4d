"""HTML pages that stay readable anywhere: the page helpers and the training report (a train stage output).

Each page is one self-contained file: inline CSS, plots as inline SVG drawn here, no script, font or link
to anything outside the page (and a Content-Security-Policy that forbids them, should one ever slip in).
A Domino artifact, an MLflow run, an e-mail attachment and a run directory copied elsewhere all show the
same thing, and a reader never needs network access. The run report (stageflow.run_report, host-side) is
built from the same helpers.

Every value a page shows comes from a file that someone else may have written (run.json, the metrics, the
labels in the data), so it is text: the helpers escape whatever is not `Html`, and Html is made only from
literal templates, whose `format` escapes what it fills in.
"""

from __future__ import annotations

import html
import math
import string
import unicodedata
from typing import Any, Callable, Iterable, Mapping, Sequence
from urllib.parse import quote

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
figure svg { width: 100%; height: auto; display: block; }
figcaption { color: var(--muted); font-size: 12.5px; margin-top: 4px; }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
.status { display: inline-block; border-radius: 10px; padding: 0 8px; font-size: 12px; font-weight: 600; }
.succeeded { background: #dafbe1; color: #1a7f37; } .failed { background: #ffebe9; color: #cf222e; }
.skipped, .pending { background: #eaeef2; color: #59636e; } .running { background: #fff8c5; color: #9a6700; }
.error { color: #cf222e; max-width: 420px; }
svg text { font-family: inherit; }
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
    if not header:  # facts, one per row: a heading over them would say nothing
        return Html("<table><tbody>{}</tbody></table>").format(body)
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


# ---------------------------------------------------------------- SVG drawing

# The plots here and the run report's DAG are SVG written by hand: no plotting library to import (matplotlib
# took 0.6 s of a train stage that trains in 0.35 s at 2 x 50,000 rows), text drawn in the page's own font,
# and markup built like the rest of the page, every value escaped by `Html.format`.
INK, MUTED, GRID, AXIS = "#1f2328", "#59636e", "#eaeef2", "#8c959f"
SERIES = ("#0969da", "#e16f24", "#2da44e", "#8250df", "#bf3989", "#6e7781")  # one colour per split, in turn
W, H = 420, 320  # a plot's size; the page scales it to its column (about 350 px wide)
TICK, TITLE = 12, 13  # font sizes of tick and category labels, and of axis titles
GAP = 15  # the least distance between two labels' baselines
SLANT = 100  # the longest a category label may be, in pixels: longer ones are cut
COS45 = 0.7071


def _em(char: str) -> float:
    return 1.1 if unicodedata.east_asian_width(char) in "WF" else 0.6


def text_width(value: str, size: float = TICK) -> float:
    """About how wide `value` is drawn: a page cannot measure text without a script, so a character is
    taken as 0.6 of the font size (an east Asian wide one as 1.1), a little more than most sans-serifs."""
    return size * sum(_em(c) for c in value)


def clip(value: str, width: float, size: float) -> str:
    """`value`, cut and ended with an ellipsis where it would be wider than `width`.

    One pass over the characters (a label comes from the data and may be long); the running sum adds the
    same floats in the same order as text_width, so the cut lands where measuring each prefix would put it."""
    if text_width(value, size) <= width:
        return value
    total, ellipsis = 0, _em("…")
    for kept, char in enumerate(value):
        if size * (total + _em(char) + ellipsis) > width:
            return value[:kept] + "…"
        total += _em(char)
    return value + "…"


def text(x: float, y: float, value: Any, size: float = TICK, anchor: str = "middle", fill: str = INK,
         width: float | None = None, angle: float = 0, bold: bool = False) -> Html:
    """A label with its baseline at y, turned `angle` degrees about (x, y); cut to `width` pixels when given,
    and then the whole value is its tooltip."""
    value = str(value)
    shown = value if width is None else clip(value, width, size)
    return Html('<text x="{:.1f}" y="{:.1f}" font-size="{}" text-anchor="{}" fill="{}"{}{}>{}{}</text>').format(
        x, y, size, anchor, fill, Html(' font-weight="600"') if bold else "",
        Html(' transform="rotate({} {:.1f} {:.1f})"').format(angle, x, y) if angle else "",
        Html("<title>{}</title>").format(value) if shown != value else "", shown)


def svg(width: float, height: float, label: str, parts: Iterable[Any], kind: str) -> Html:
    """A drawing in the page, named for screen readers (aria-label) and on hover (title)."""
    return Html('<svg class="{0}" width="{1}" height="{2}" viewBox="0 0 {1} {2}" role="img" aria-label="{3}">'
                "<title>{3}</title>{4}</svg>").format(kind, width, height, label, Html("").join(parts))


def scale(low: float, high: float, start: float, end: float) -> Callable[[float], float]:
    """The linear map of [low, high] onto [start, end]; a single value goes to the middle."""
    if high == low:
        return lambda value: (start + end) / 2
    return lambda value: start + (value - low) * (end - start) / (high - low)


def nice_step(span: float, most: float, whole: bool = False) -> float:
    """The tick spacing: 1, 2, 2.5 or 5 times a power of ten, the smallest giving at most `most` steps over
    `span`; a whole number when `whole` (epochs, rows)."""
    raw = span / max(most, 1)
    if raw <= 0 or (whole and raw <= 1):
        return 1
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw and not (whole and (m * power) % 1))


def value_ticks(high: float, whole: bool = False, most: int = 5) -> list[float]:
    """Ticks from 0 to the first at or above `high`, so the largest value stays inside the plot."""
    step = nice_step(high, most, whole)
    return [i * step for i in range(max(1, math.ceil(round(high / step, 9))) + 1)]


def short(value: float) -> str:
    """A round tick value in few characters: 2500, 25k, 2.5M."""
    for least, unit, suffix in ((1e9, 1e9, "G"), (1e6, 1e6, "M"), (1e4, 1e3, "k")):
        if value >= least:
            return f"{value / unit:g}{suffix}"
    return f"{value:g}"


def left_margin(labels: Iterable[str]) -> float:
    """Room left of a plot for its widest label (cut at SLANT) and the vertical axis title."""
    return 30 + min(max((text_width(label) for label in labels), default=0), SLANT)


def y_axis(ticks: Sequence[float], names: Sequence[str], y: Callable[[float], float], left: float, right: float,
           title: str) -> Html:
    """Grid lines at the ticks, their names left of the plot, and the axis title beside them."""
    parts = [Html('<line x1="{0:.1f}" y1="{1:.1f}" x2="{2:.1f}" y2="{1:.1f}" stroke="{3}"/>').format(
        left, y(t), right, GRID) for t in ticks]
    parts += [text(left - 6, y(t) + TICK * 0.35, name, anchor="end", fill=MUTED) for t, name in zip(ticks, names)]
    parts.append(text(14, (y(ticks[0]) + y(ticks[-1])) / 2, title, size=TITLE, fill=MUTED, angle=-90))
    return Html("").join(parts)


def x_title(left: float, right: float, title: str) -> Html:
    return text((left + right) / 2, H - 6, title, size=TITLE, fill=MUTED)


def frame(left: float, top: float, right: float, bottom: float) -> Html:
    """The plot's two axis lines, left and bottom."""
    return Html('<path d="M {:.1f} {:.1f} V {:.1f} H {:.1f}" fill="none" stroke="{}"/>').format(
        left, top, bottom, right, AXIS)


def level(names: Sequence[str], band: float) -> bool:
    """Whether category names fit their bands side by side; if not they are slanted."""
    return all(text_width(name) <= band - 4 for name in names)


def plot_bottom(names: Sequence[str], band: float) -> float:
    """Where a plot with categories along its bottom ends: above their names and the axis title."""
    depth = TICK + 4 if level(names, band) else min(max(map(text_width, names)), SLANT) * COS45 + TICK
    return H - TITLE - 14 - depth


def category_labels(names: Sequence[str], left: float, band: float, y: float) -> Html:
    """A name under the middle of each band: level when they all fit, else slanted and cut to SLANT; where
    the bands are too narrow for a line each, every k-th name (tooltips and tables hold them all)."""
    if level(names, band):
        return Html("").join(text(left + (i + 0.5) * band, y + TICK + 2, name) for i, name in enumerate(names))
    every = math.ceil(GAP / (band * COS45))
    return Html("").join(text(left + (i + 0.5) * band + TICK * 0.3, y + TICK * 0.7, name, anchor="end",
                              width=SLANT, angle=-45) for i, name in enumerate(names) if i % every == 0)


def figure(drawing: Html, caption: str) -> Html:
    return Html("<figure>{}<figcaption>{}</figcaption></figure>").format(drawing, caption)


def shade(fraction: float) -> str:
    """A blue from pale (0) to deep (1), for a count's share of the largest."""
    pale, deep = (239, 245, 252), (8, 69, 148)
    return "#" + "".join(f"{round(p + (d - p) * fraction):02x}" for p, d in zip(pale, deep))


def confusion_plot(classes: Sequence[str], matrix: Sequence[Sequence[int]]) -> Html:
    """A cell per pair of true (row) and predicted (column) class, shaded by its count and labelled with it
    where the number fits; each cell's tooltip names its pair and count."""
    top, left, right = 8, left_margin(classes) + 6, W - 8
    band_x = (right - left) / max(len(classes), 1)
    bottom = plot_bottom(classes, band_x)
    band_y = (bottom - top) / max(len(classes), 1)
    most = max((max(row, default=0) for row in matrix), default=0) or 1
    digits = max((len(f"{count:,}") for row in matrix for count in row), default=1)
    size = round(min(14, band_y * 0.5, (band_x - 4) / (0.6 * digits)), 1)  # the counts' font: the widest fits
    parts = []
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            x, y = left + j * band_x, top + i * band_y
            parts.append(Html('<rect x="{:.1f}" y="{:.1f}" width="{:.1f}" height="{:.1f}" fill="{}" stroke="#fff">'
                              "<title>true {}, predicted {}: {:,}</title></rect>").format(
                x, y, band_x, band_y, shade(count / most), classes[i], classes[j], count))
            if size >= 7:
                parts.append(text(x + band_x / 2, y + band_y / 2 + size * 0.35, f"{count:,}", size=size,
                                  fill="#fff" if count / most > 0.55 else INK))
    every = math.ceil(GAP / band_y)
    parts += [text(left - 6, top + (i + 0.5) * band_y + TICK * 0.35, name, anchor="end", width=SLANT)
              for i, name in enumerate(classes) if i % every == 0]
    parts += [category_labels(classes, left, band_x, bottom), x_title(left, right, "predicted class"),
              text(14, (top + bottom) / 2, "true class", size=TITLE, fill=MUTED, angle=-90)]
    return svg(W, H, f"Confusion matrix: {len(classes)} classes, true by row, predicted by column", parts, "plot")


def loss_plot(series: Mapping[str, Sequence[float]]) -> Html:
    """Each loss per epoch as a line (training, hold-out, validation), a dot per epoch up to 50 of them with
    its value as a tooltip, a legend when there is more than one. A diverged epoch's loss (inf, nan) is left
    out of its line."""
    series = {name: list(values) for name, values in series.items()}
    n = max((len(values) for values in series.values()), default=0)
    drawn = [v for values in series.values() for v in values if math.isfinite(v)]
    ticks = value_ticks(max(drawn, default=1))
    names = [f"{t:g}" for t in ticks]
    widest = text_width(str(n))  # the last epoch's label, the widest, centred under the plot's right edge
    top = 10 if len(series) == 1 else 30
    left, right, bottom = left_margin(names), W - max(12, widest / 2 + 4), H - TITLE - 2 * TICK - 6
    x, y = scale(1, n, left, right), scale(0, ticks[-1], bottom, top)
    step = int(nice_step(n - 1, (right - left) / (widest + 16), whole=True))
    title = "loss (mean cross-entropy)" if len(series) > 1 else f"{next(iter(series), 'training')} loss"
    parts = [y_axis(ticks, names, y, left, right, title), frame(left, top, right, bottom)]
    if len(series) > 1:
        parts.append(legend(list(series), left, right))
    for epoch in range(1, n + 1) if step == 1 else range(step, n + 1, step):
        parts.append(Html('<line x1="{0:.1f}" y1="{1:.1f}" x2="{0:.1f}" y2="{2:.1f}" stroke="{3}"/>').format(
            x(epoch), bottom, bottom + 4, AXIS))
        parts.append(text(x(epoch), bottom + 6 + TICK, epoch, fill=MUTED))
    for k, (name, values) in enumerate(series.items()):
        colour = SERIES[k % len(SERIES)]
        points = [(x(i), y(v), i, v) for i, v in enumerate(values, 1) if math.isfinite(v)]
        parts.append(Html('<polyline points="{}" fill="none" stroke="{}" stroke-width="2" stroke-linejoin="round"'
                          '{}/>').format(" ".join(f"{px:.1f},{py:.1f}" for px, py, _, _ in points), colour,
                                         Html(' stroke-dasharray="6 3"') if k else ""))
        if n <= 50:
            parts += [Html('<circle cx="{:.1f}" cy="{:.1f}" r="3" fill="{}"><title>{}, epoch {}: {:.4f}</title>'
                           "</circle>").format(px, py, colour, name, i, v) for px, py, i, v in points]
    parts.append(x_title(left, right, "epoch"))
    summary = "; ".join(f"{name} from {values[0]:.4f} to {values[-1]:.4f}" for name, values in series.items() if values)
    return svg(W, H, f"Loss per epoch: {n} epochs" + (f", {summary}" if summary else ""), parts, "plot")


def legend(names: Sequence[str], left: float, right: float) -> Html:
    """A swatch and a name per series along the top, each name cut to its share of the width."""
    parts, x, room = [], left, (right - left) / max(len(names), 1) - 24
    for k, name in enumerate(names):
        parts.append(Html('<rect x="{:.1f}" y="6" width="11" height="11" rx="2" fill="{}"/>').format(
            x, SERIES[k % len(SERIES)]))
        parts.append(text(x + 15, 16, name, anchor="start", width=room))
        x += 15 + min(text_width(name), room) + 20
    return Html("").join(parts)


def balance_plot(counts: Mapping[str, Mapping[str, int]]) -> Html:
    """Rows per class in each split, side by side: a skewed split or a rare class shows at a glance. Each
    bar is labelled with its count where the number fits its width, and names it in its tooltip."""
    classes = sorted({c for split in counts.values() for c in split})
    ticks = value_ticks(max((n for split in counts.values() for n in split.values()), default=1), whole=True)
    names = [short(t) for t in ticks]
    top, left, right = 40, left_margin(names), W - 8
    band = (right - left) / max(len(classes), 1)
    bottom = plot_bottom(classes, band)
    y, bar = scale(0, ticks[-1], bottom, top), band * 0.8 / max(len(counts), 1)
    parts = [y_axis(ticks, names, y, left, right, "rows"), legend(list(counts), left, right)]
    for k, (split, per_class) in enumerate(counts.items()):
        for i, name in enumerate(classes):
            count, x = per_class.get(name, 0), left + (i + 0.1) * band + k * bar
            parts.append(Html('<rect x="{:.1f}" y="{:.1f}" width="{:.1f}" height="{:.1f}" fill="{}">'
                              "<title>{}, {}: {:,}</title></rect>").format(
                x, y(count), bar, bottom - y(count), SERIES[k % len(SERIES)], split, name, count))
            if text_width(f"{count:,}", 10) <= bar + 2:
                parts.append(text(x + bar / 2, y(count) - 3, f"{count:,}", size=10))
    parts += [frame(left, top, right, bottom), category_labels(classes, left, band, bottom),
              x_title(left, right, "class")]
    return svg(W, H, f"Rows per class in each split: {', '.join(counts)}", parts, "plot")


# ---------------------------------------------------------------- the training report

MAX_PLOT_CLASSES = 30  # classes a plot draws; beyond, the ones with the most rows, and its caption says so
MAX_TABLE_CLASSES = 50  # classes the per-class table lists; beyond, those with the lowest F1 and a summary
LOWEST_SHOWN = 25  # of those, how many


def largest_classes(metrics: Mapping[str, Any], most: int) -> list[str]:
    """The `most` classes with the most rows (train and test), in class order: what a bounded plot shows."""
    classes = metrics["classes"]
    if len(classes) <= most:
        return list(classes)
    counts = metrics.get("class_counts", {})
    size = {c: sum(split.get(c, 0) for split in counts.values()) for c in classes}
    chosen = set(sorted(classes, key=lambda c: (-size[c], c))[:most])
    return [c for c in classes if c in chosen]


def confusion_of(metrics: Mapping[str, Any], chosen: Sequence[str]) -> list[list[int]]:
    """The confusion matrix between the `chosen` classes, from the whole matrix or from its nonzero cells."""
    index = {c: i for i, c in enumerate(metrics["classes"])}
    if metrics.get("confusion_matrix") is not None:
        matrix = metrics["confusion_matrix"]
        return [[matrix[index[t]][index[p]] for p in chosen] for t in chosen]
    where = {index[c]: k for k, c in enumerate(chosen)}
    found = [[0] * len(chosen) for _ in chosen]
    for true, predicted, count in metrics.get("confusion_nonzero", []):
        if true in where and predicted in where:
            found[where[true]][where[predicted]] = count
    return found


def plot_caption(text: str, shown: int, total: int) -> str:
    if shown == total:
        return text
    return f"{text}: the {shown} largest of {total:,} classes (metrics.json holds every class)"


def per_class_table(metrics: Mapping[str, Any]) -> Html:
    """Precision, recall, F1 and support per class: every class up to MAX_TABLE_CLASSES, else the LOWEST_SHOWN
    with the lowest F1, and a line on the spread of F1 over all of them."""
    per_class, classes = metrics["per_class"], metrics["classes"]
    shown = classes if len(classes) <= MAX_TABLE_CLASSES else \
        sorted(classes, key=lambda c: (per_class[c]["f1"], c))[:LOWEST_SHOWN]
    rows = [(c, f"{per_class[c]['precision']:.3f}", f"{per_class[c]['recall']:.3f}", f"{per_class[c]['f1']:.3f}",
             f"{per_class[c]['support']:,}") for c in shown]
    found = table(["class", "precision", "recall", "F1", "support"], rows, numeric=range(1, 5))
    if len(shown) == len(classes):
        return found
    f1 = sorted(scores["f1"] for scores in per_class.values())
    note = Html("<p>The {} classes with the lowest F1 of {:,}; F1 over all of them: lowest {:.3f}, median {:.3f}, "
                "highest {:.3f}. metrics.json holds every class.</p>").format(
        len(shown), len(classes), f1[0], f1[len(f1) // 2], f1[-1])
    return Html("{}{}").format(note, found)


def model_section(metrics: Mapping[str, Any]) -> Html:
    model, label = metrics.get("model", {}), metrics.get("label", {})
    features = metrics.get("feature_names", [])
    rows = [("estimator", Html("<code>{}</code>").format(model.get("estimator", DASH))),
            ("preprocessing", f"{model.get('preprocessing', DASH)}: each feature to mean 0 and standard deviation 1, "
                              f"from the training rows"),
            ("features", f"{len(features)}, in this order: {', '.join(features)}"),
            ("label", f"{label.get('column', DASH)} ({label.get('type', 'text')}; predicted as "
                      f"{'integers' if label.get('type') == 'int' else 'text'})"),
            ("file", f"{model.get('format', DASH)} (loads without running code; trusted types beyond skops's own: "
                     f"{', '.join(model.get('trusted_types', [])) or 'none'})"),
            ("scikit-learn", metrics.get("scikit_learn_version", DASH)),
            ("sha256", Html("<code>{}</code>").format(metrics.get("model_sha256", DASH)))]
    return section("Model", table([], rows))


def data_section(metrics: Mapping[str, Any]) -> Html:
    """What the model was trained on: the sources (rows, sha256), the rows merged, dropped and why, the split,
    and each feature's range and missing values."""
    data = metrics.get("data", {})
    sources = table(["source", "rows", "format", "sha256"],
                    [(s.get("input", DASH), f"{s.get('rows', 0):,}", s.get("format", DASH),
                      Html("<code>{}</code>").format(s.get("sha256", DASH))) for s in data.get("sources", [])],
                    numeric=(1,))
    dropped = data.get("dropped_by", {})
    lines = [Html("<p>Merged: {} rows ({} in both sources). Dropped: {} row(s){}. Used: {:,} to train on, {:,} to "
                  "test on{}.</p>").format(
        fmt(data.get("merged_rows"), ","), fmt(data.get("overlap"), ","), fmt(data.get("dropped"), ","),
        ": " + "; ".join(f"{reason} {count:,}" for reason, count in dropped.items()) if dropped else "",
        metrics.get("n_train", 0), metrics.get("n_test", 0),
        f" ({metrics['n_validation']:,} of the training rows held out for early stopping)"
        if metrics.get("n_validation") else "")]
    features = metrics.get("features", {})
    per_feature = table(["feature", "type", "min", "max", "mean", "std", "missing"],
                        [(name, f["type"], f"{f['min']:.4g}", f"{f['max']:.4g}", f"{f['mean']:.4g}", f"{f['std']:.4g}",
                          f"{f['missing']:,}") for name, f in features.items()], numeric=range(2, 7))
    caption = Html("<p>Features over the rows used; missing: rows of the merged data without a value (or NaN), "
                   "which were dropped.</p>")
    return section("Data", sources, Html("").join(lines), caption if features else "", per_feature if features else "")


def settings_rows(metrics: Mapping[str, Any]) -> list[tuple[str, Any]]:
    stop = metrics.get("early_stopping", 0)
    stopping = "off" if not stop else (
        f"after {stop} epochs without a fall of the validation loss by {metrics.get('tolerance', 0):g} "
        f"(validation: {metrics.get('validation_fraction', 0):.0%} of the training rows)")
    if stop and metrics.get("best_epoch"):
        ran = len(metrics.get("loss_per_epoch", []))
        stopping += (f"; stopped after epoch {ran}" if metrics.get("stopped_early") else f"; ran all {ran} epochs")
        stopping += f", the model is epoch {metrics['best_epoch']}'s"
    layers = metrics.get("hidden_layers")
    return [("epochs", fmt(metrics.get("epochs"))), ("batch size", fmt(metrics.get("batch_size"))),
            ("effective batch size", fmt(metrics.get("effective_batch_size"))),
            ("learning rate", fmt(metrics.get("learning_rate"))),
            ("hidden layers", repr(tuple(layers)) if isinstance(layers, list) else fmt(layers)),
            ("seed", fmt(metrics.get("seed"))), ("test fraction", fmt(metrics.get("test_fraction"))),
            ("early stopping", stopping), ("training seconds", fmt(metrics.get("seconds")))]


def training_report(metrics: Mapping[str, Any]) -> str:
    """The page a data scientist opens after training: is the model good, what is it, and what was it trained
    on? Its size is bounded whatever the number of classes: the plots draw at most MAX_PLOT_CLASSES and the
    table lists at most MAX_TABLE_CLASSES, each saying what it leaves out (metrics.json holds all of it)."""
    classes = metrics["classes"]
    losses = metrics["loss_per_epoch"]
    holdout = metrics.get("holdout_loss_per_epoch", [])
    counts = metrics.get("class_counts", {})
    ran = f"{len(losses)} of {metrics['epochs']}" if metrics.get("epochs", len(losses)) != len(losses) else len(losses)
    headline = cards([("accuracy", f"{metrics['accuracy']:.3f}"), ("macro F1", f"{metrics['macro_f1']:.3f}"),
                      ("test rows", f"{metrics.get('n_test', 0):,}"), ("epochs", ran),
                      ("final loss", f"{losses[-1]:.4f}" if losses else DASH),
                      ("hold-out loss", f"{holdout[-1]:.4f}" if holdout else DASH)])
    series = {"training": losses, **({"hold-out": holdout} if holdout else {}),
              **({"validation": metrics["validation_loss_per_epoch"]} if metrics.get("validation_loss_per_epoch") else {})}
    shown = largest_classes(metrics, MAX_PLOT_CLASSES)
    plots = [figure(confusion_plot(shown, confusion_of(metrics, shown)),
                    plot_caption("Confusion matrix on the hold-out set", len(shown), len(classes))),
             figure(loss_plot(series), "Loss per epoch: on the training batches, and on the hold-out rows after each "
                                       "epoch" + (" and on the validation rows early stopping watches"
                                                  if "validation" in series else ""))]
    if counts:
        plots.append(figure(balance_plot({split: {c: per_class.get(c, 0) for c in shown}
                                          for split, per_class in counts.items()}),
                            plot_caption("Class balance of the data, per split", len(shown), len(classes))))
    return page("Training report", f"{fmt(metrics.get('n_train'), ',')} training rows, "
                                   f"{fmt(metrics.get('n_test'), ',')} hold-out rows, {len(classes):,} classes",
                headline,
                section("Hold-out metrics per class", per_class_table(metrics)),
                section("Plots", Html('<div class="plots">{}</div>').format(Html("").join(plots))),
                model_section(metrics), data_section(metrics),
                section("Training settings", table(["setting", "value"], settings_rows(metrics))))
