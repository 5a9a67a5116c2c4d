"""The reports: training report (train stage output), run report, the CLI's summary, progress lines."""

import html
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from xml.etree import ElementTree

import pytest

from stageflow import run_report
from stageflow.runtime import contract, report, schema as schemas
from stageflow.cli import headline_text, summary
from stageflow.runtime.progress import Progress, duration, progress_line

from conftest import ROOT, assert_self_contained, classes, load_stage, references

train = load_stage("train")

METRICS = {
    "accuracy": 0.9333, "macro_f1": 0.9327, "classes": ["setosa", "versicolor", "virginica"],
    "confusion_matrix": [[10, 0, 0], [0, 8, 2], [0, 0, 10]],
    "per_class": {"setosa": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 10},
                  "versicolor": {"precision": 1.0, "recall": 0.8, "f1": 0.8889, "support": 10},
                  "virginica": {"precision": 0.8333, "recall": 1.0, "f1": 0.9091, "support": 10}},
    "loss_per_epoch": [0.9, 0.5, 0.31, 0.2], "holdout_loss_per_epoch": [0.8, 0.45, 0.35, 0.3],
    "n_train": 120, "n_test": 30, "epochs": 4, "batch_size": 32, "effective_batch_size": 32, "hidden_layers": [16],
    "learning_rate": 0.05, "seed": 42, "test_fraction": 0.2, "early_stopping": 0, "seconds": 0.1,
    "class_counts": {"train": {"setosa": 40, "versicolor": 40, "virginica": 40},
                     "test": {"setosa": 10, "versicolor": 10, "virginica": 10}},
    "feature_names": ["SepalLengthCm", "PetalWidthCm"],
    "features": {"SepalLengthCm": {"type": "float", "min": 4.3, "max": 7.9, "mean": 5.84, "std": 0.83, "missing": 2},
                 "PetalWidthCm": {"type": "float", "min": 0.1, "max": 2.5, "mean": 1.2, "std": 0.76, "missing": 0}},
    "label": {"column": "Species", "type": "text"},
    "data": {"sources": [{"input": "datasetA", "sha256": "c" * 64, "rows": 76, "format": "csv"},
                         {"input": "datasetB", "sha256": "d" * 64, "rows": 76, "format": "jsonl"}],
             "overlap": 0, "merged_rows": 152, "rows": 150, "dropped": 2, "dropped_by": {"SepalLengthCm missing": 2}},
    "model": {"estimator": "MLPClassifier(hidden_layer_sizes=(16,))", "preprocessing": "StandardScaler",
              "format": "skops", "trusted_types": ["sklearn.neural_network._stochastic_optimizers.AdamOptimizer"]},
    "scikit_learn_version": "1.9.1", "model_sha256": "ab" * 32,
}


def plots(page):
    """Each plot in a page, parsed: the SVG is XML, and ElementTree reads its shapes and labels."""
    return [ElementTree.fromstring(svg) for svg in re.findall(r'<svg class="plot".*?</svg>', page, re.S)]


def plot_area(drawing):
    """left, top, right, bottom of a plot's area, from its axis lines (M left top V bottom H right)."""
    left, top, bottom, right = map(float, re.fullmatch(r"M (\S+) (\S+) V (\S+) H (\S+)", drawing.find("path").get("d")).groups())
    return left, top, right, bottom


def texts(drawing):
    return [label for label in drawing.iter("text")]


def shown(label):
    """A label's text as drawn, without its tooltip."""
    return label.text or label.find("title").tail


def line_points(drawing):
    return [tuple(map(float, point.split(","))) for point in drawing.find("polyline").get("points").split()]


# ------------------------------------------------------------------ training report


@pytest.fixture(scope="module")
def training_page():
    return report.training_report(METRICS)


def card(label, value):
    return f'<div class="label">{label}</div><div class="value">{value}</div>'


def test_training_report_shows_the_metrics(training_page):
    assert card("accuracy", "0.933") in training_page and card("macro F1", "0.933") in training_page
    assert card("final loss", "0.2000") in training_page and card("test rows", "30") in training_page
    assert card("hold-out loss", "0.3000") in training_page
    text = visible(training_page)
    for row in ("setosa 1.000 1.000 1.000 10", "versicolor 1.000 0.800 0.889 10", "virginica 0.833 1.000 0.909 10"):
        assert row in text
    assert "hidden layers (16,)" in text and "learning rate 0.05" in text and "early stopping off" in text
    assert "seed 42" in text and "test fraction 0.2" in text
    assert f"sha256 {'ab' * 32}" in text


def visible(page):
    """A page's text as a reader sees it, plots left out."""
    return html.unescape(" ".join(re.sub(r"<svg.*?</svg>|<[^>]+>", " ", page, flags=re.S).split()))


def test_training_report_says_what_was_trained_on_what(training_page):
    text = visible(training_page)
    assert "estimator MLPClassifier(hidden_layer_sizes=(16,))" in text
    assert "preprocessing StandardScaler: each feature to mean 0 and standard deviation 1" in text
    assert "features 2, in this order: SepalLengthCm, PetalWidthCm" in text
    assert "scikit-learn 1.9.1" in text and "skops" in text
    assert f"datasetA 76 csv {'c' * 64}" in text and f"datasetB 76 jsonl {'d' * 64}" in text
    assert "Merged: 152 rows (0 in both sources). Dropped: 2 row(s): SepalLengthCm missing 2." in text
    assert "Used: 120 to train on, 30 to test on." in text
    assert "SepalLengthCm float 4.3 7.9 5.84 0.83 2" in text and "PetalWidthCm float 0.1 2.5 1.2 0.76 0" in text


def test_the_class_balance_is_a_plot_not_also_a_table(training_page):
    text = visible(training_page)
    assert "Class balance" not in text.replace("Class balance of the data, per split", "")
    assert "class train test" not in text


def test_training_report_draws_three_named_svg_plots_and_nothing_else(training_page):
    drawings = plots(training_page)
    assert [d.get("aria-label").split(":")[0] for d in drawings] == [
        "Confusion matrix", "Loss per epoch", "Rows per class in each split"]
    assert all(d.get("role") == "img" and d.find("title").text == d.get("aria-label") for d in drawings)
    assert "<img" not in training_page and not [ref for ref in references(training_page) if ref.startswith("data:")]
    assert_self_contained(training_page)


def brightness(fill):
    return sum(int(fill[i:i + 2], 16) for i in (1, 3, 5))


def test_confusion_matrix_has_a_cell_per_class_pair_with_its_count(training_page):
    drawing, classes, matrix = plots(training_page)[0], METRICS["classes"], METRICS["confusion_matrix"]
    cells = list(drawing.iter("rect"))
    assert [cell.find("title").text for cell in cells] == [
        f"true {true}, predicted {predicted}: {matrix[i][j]}"
        for i, true in enumerate(classes) for j, predicted in enumerate(classes)]
    counts = [label for label in texts(drawing) if label.text.isdigit()]
    assert [int(label.text) for label in counts] == [n for row in matrix for n in row]
    for cell, label in zip(cells, counts):  # each count drawn in the middle of its own cell
        x, y, width, height = (float(cell.get(k)) for k in ("x", "y", "width", "height"))
        assert float(label.get("x")) == pytest.approx(x + width / 2, abs=0.1) and y < float(label.get("y")) < y + height
    by_count = sorted(zip((n for row in matrix for n in row), (brightness(cell.get("fill")) for cell in cells)))
    assert [b for _, b in by_count] == sorted((b for _, b in by_count), reverse=True)  # more rows, darker
    assert by_count[0][1] > by_count[-1][1]
    assert {shown(label) for label in texts(drawing)} >= {*classes, "true class", "predicted class"}


def test_loss_line_has_a_point_per_epoch_scaled_inside_the_plot(training_page):
    drawing, losses = plots(training_page)[1], METRICS["loss_per_epoch"]
    left, top, right, bottom = plot_area(drawing)
    points = line_points(drawing)
    assert len(points) == len(losses) and len(drawing.findall("circle")) == 2 * len(losses)
    assert points[0][0] == left and points[-1][0] == right and [x for x, _ in points] == sorted({x for x, _ in points})
    assert all(top <= y <= bottom for _, y in points)
    heights = [bottom - y for _, y in points]  # height above the 0 line in proportion to the loss
    assert [h / heights[0] for h in heights] == pytest.approx([v / losses[0] for v in losses], abs=0.01)
    labels = [shown(label) for label in texts(drawing)]
    assert {"1", "2", "3", "4", "epoch", "loss (mean cross-entropy)", "training", "hold-out"} <= set(labels)


def test_the_hold_out_loss_is_drawn_beside_the_training_loss(training_page):
    drawing = plots(training_page)[1]
    lines = drawing.findall("polyline")
    assert len(lines) == 2 and lines[0].get("stroke") != lines[1].get("stroke")
    _, top, _, bottom = plot_area(drawing)
    train_line = [tuple(map(float, p.split(","))) for p in lines[0].get("points").split()]
    holdout = [tuple(map(float, p.split(","))) for p in lines[1].get("points").split()]
    assert [x for x, _ in holdout] == [x for x, _ in train_line]  # the same epochs
    ratio = [(bottom - y) / (bottom - train_line[0][1]) for _, y in holdout]
    assert ratio == pytest.approx([v / METRICS["loss_per_epoch"][0] for v in METRICS["holdout_loss_per_epoch"]], abs=0.01)
    tips = [c.find("title").text for c in drawing.findall("circle")]
    assert "hold-out, epoch 4: 0.3000" in tips and "training, epoch 1: 0.9000" in tips


def test_loss_over_ten_thousand_epochs_keeps_every_point_but_few_ticks_and_no_markers():
    losses = [1 / (1 + i / 100) for i in range(10_000)]
    drawing = ElementTree.fromstring(report.loss_plot({"training": losses}))
    left, top, right, bottom = plot_area(drawing)
    points = line_points(drawing)
    assert len(points) == 10_000 and points[-1][0] == right and all(top <= y <= bottom for _, y in points)
    assert drawing.findall("circle") == []
    epochs = [label for label in texts(drawing) if label.text.isdigit() and float(label.get("y")) > bottom]
    assert 3 <= len(epochs) <= 10 and epochs[-1].text == "10000"
    steps = {int(b.text) - int(a.text) for a, b in zip(epochs, epochs[1:])}
    assert len(steps) == 1 and steps.pop() % 1000 == 0  # round, even steps
    widest = report.text_width("10000")
    assert float(epochs[-1].get("x")) + widest / 2 <= report.W  # the last label inside the drawing


def test_a_diverged_epoch_leaves_a_gap_not_a_broken_report():
    drawing = ElementTree.fromstring(report.loss_plot({"training": [0.9, float("nan"), 0.3, float("inf")]}))
    assert len(line_points(drawing)) == 2 and len(drawing.findall("circle")) == 2


def test_class_balance_has_a_bar_per_class_and_split_with_its_count(training_page):
    drawing, counts = plots(training_page)[2], METRICS["class_counts"]
    left, top, right, bottom = plot_area(drawing)
    bars = {rect.find("title").text: rect for rect in drawing.iter("rect") if rect.find("title") is not None}
    assert set(bars) == {f"{split}, {c}: {n}" for split, per_class in counts.items() for c, n in per_class.items()}
    for title, rect in bars.items():  # heights in proportion to the counts, standing on the axis
        n = int(title.rsplit(" ", 1)[1])
        assert float(rect.get("height")) / n == pytest.approx(float(bars["train, setosa: 40"].get("height")) / 40, rel=0.01)
        assert float(rect.get("y")) + float(rect.get("height")) == pytest.approx(bottom, abs=0.1)
    colours = {split: {bars[f"{split}, {c}: {n}"].get("fill") for c, n in per_class.items()}
               for split, per_class in counts.items()}
    assert all(len(c) == 1 for c in colours.values()) and colours["train"] != colours["test"]  # a colour per split
    on_bars = [label for label in texts(drawing) if label.get("font-size") == "10"]
    assert [label.text for label in on_bars] == [title.rsplit(" ", 1)[1] for title in bars]  # its count over each bar
    for label, rect in zip(on_bars, bars.values()):
        assert float(label.get("x")) == pytest.approx(float(rect.get("x")) + float(rect.get("width")) / 2, abs=0.1)
        assert float(label.get("y")) < float(rect.get("y"))
    assert {"train", "test", "rows", "class", *METRICS["classes"]} <= {shown(label) for label in texts(drawing)}


@pytest.mark.parametrize("high, whole, ticks", [
    (1.0, False, [0, 0.2, 0.4, 0.6, 0.8, 1.0]), (0.31, False, [0, 0.1, 0.2, 0.3, 0.4]),
    (26_699, True, [0, 10_000, 20_000, 30_000]), (3, True, [0, 1, 2, 3]), (7, True, [0, 2, 4, 6, 8]),
    (0, True, [0, 1]), (2_400_000, True, [0, 500_000, 1_000_000, 1_500_000, 2_000_000, 2_500_000])])
def test_ticks_are_round_and_reach_the_largest_value(high, whole, ticks):
    assert report.value_ticks(high, whole) == pytest.approx(ticks)


def test_tick_labels_stay_short():
    assert [report.short(v) for v in (0, 2500, 25_000, 2_500_000, 3e9)] == ["0", "2500", "25k", "2.5M", "3G"]


def slanted(drawing):
    return [label for label in texts(drawing) if label.get("transform", "").startswith("rotate(-45 ")]


def test_long_class_names_are_slanted_and_cut_not_overlapped():
    names = [f"a class name far longer than its column {i} <&>" for i in range(3)]
    drawing = ElementTree.fromstring(report.confusion_plot(names, [[5, 0, 0], [0, 5, 0], [0, 0, 5]]))
    cut = [label for label in texts(drawing) if label.find("title") is not None]
    assert len(cut) == 6  # each name in the rows and under the columns
    assert sorted(label.find("title").text for label in cut) == sorted(names * 2)  # the whole name on hover
    assert all(shown(label).endswith("…") and report.text_width(shown(label)) <= report.SLANT for label in cut)
    assert len(slanted(drawing)) == 3  # under the columns


def test_many_classes_show_every_kth_name_at_least_a_line_apart():
    names = [f"class {i:02d}" for i in range(60)]
    drawing = ElementTree.fromstring(report.balance_plot({"train": {c: 100 * i for i, c in enumerate(names)}}))
    columns = slanted(drawing)
    assert 5 < len(columns) < 60 and shown(columns[0]) == "class 00"
    xs = [float(label.get("x")) for label in columns]
    assert min(b - a for a, b in zip(xs, xs[1:])) * report.COS45 >= report.TICK  # slanted lines that never touch
    assert len([r for r in drawing.iter("rect") if r.find("title") is not None]) == 60  # yet a bar for each class


def test_training_report_is_deterministic(training_page):
    assert report.training_report(METRICS) == training_page  # same run, same bytes (cache-friendly)


def test_values_from_the_data_are_escaped():
    metrics = {**METRICS, "classes": ["<b>x</b>", "y"], "confusion_matrix": [[1, 0], [0, 1]],
               "per_class": {c: METRICS["per_class"]["setosa"] for c in ("<b>x</b>", "y")},
               "class_counts": {'<i a="b">s</i>': {"<b>x</b>": 1, "y": 2}}}
    page = report.training_report(metrics)
    assert "<b>" not in page and "<i " not in page and "&lt;b&gt;x&lt;/b&gt;" in page
    assert len(plots(page)) == 3  # still well-formed: every plot parses


def test_train_stage_writes_the_report_output(train_root, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert contract.run(train.train, ["model", "metrics", "report"]) == 0
    outputs = train_root / "outputs"
    page = (outputs / "report").read_text()
    metrics = json.loads((outputs / "metrics").read_text())
    assert metrics["headline"] == train.headline(metrics)
    assert contract.sha256_file(outputs / "model") in page
    assert f"{metrics['accuracy']:.3f}" in page and len(plots(page)) == 3
    assert len(line_points(plots(page)[1])) == metrics["epochs"] == len(metrics["holdout_loss_per_epoch"])
    names = sorted(classes(schemas.active()))
    assert metrics["class_counts"] == {"train": dict.fromkeys(names, 16), "test": dict.fromkeys(names, 4)}
    assert_self_contained(page)


DOMINO_UID = 12574


def python_for(uid):
    """An interpreter `uid` can run: ours, else the system's of the same version given our site-packages
    (ours may live under a home that other users cannot enter)."""
    candidates = [(sys.executable, ""),
                  (f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}", sysconfig.get_paths()["purelib"])]
    for exe, path in candidates:
        try:
            probe = subprocess.run([exe, "-c", "import numpy, sklearn"], env={"PYTHONPATH": path},
                                   user=uid, group=uid, capture_output=True, timeout=60, cwd="/")
        except OSError:
            continue
        if probe.returncode == 0:
            return exe, path
    pytest.skip(f"no Python interpreter with the stage's packages is usable by uid {uid}")


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="switching to Domino's uid needs root")
def test_train_stage_runs_as_domino_uid_without_a_home(train_root):
    """As in a stage container: uid 12574, no HOME, no passwd entry; the stage must neither fail nor warn."""
    exe, path = python_for(DOMINO_UID)
    tree = Path(tempfile.mkdtemp(prefix="stageflow-uid-"))  # pytest's own tmp is private to root
    try:
        shutil.copytree(train_root, tree, dirs_exist_ok=True)
        for folder in (tree, tree / "inputs", tree / "outputs"):
            os.chmod(folder, 0o777)
        env = {"PATH": os.environ["PATH"], "WORKFLOW_ROOT": str(tree), schemas.ENV: str(schemas.path()),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), path]))}
        proc = subprocess.run([exe, str(ROOT / "stages" / "train" / "main.py")], env=env, user=DOMINO_UID,
                              group=DOMINO_UID, capture_output=True, text=True, timeout=120, cwd="/")
        assert proc.returncode == 0, proc.stderr
        assert "Warning" not in proc.stderr and "WARNING" not in proc.stderr, proc.stderr
        assert len(plots((tree / "outputs" / "report").read_text())) == 3
    finally:
        shutil.rmtree(tree)


@pytest.mark.slow
def test_mlflow_is_not_imported_before_it_is_needed_nor_any_plotting_library(train_root):
    """Importing the stage pulls in neither; a run without MLFLOW_TRACKING_URI never imports mlflow, and the
    report draws its plots itself."""
    code = ("import sys, importlib.util; sys.path[:0] = [%r, %r]; from conftest import load_stage; "
            "train = load_stage('train'); print('before', 'matplotlib' in sys.modules, 'mlflow' in sys.modules); "
            "from stageflow.runtime import contract; contract.run(train.train, ['model', 'metrics', 'report']); "
            "print('after', 'matplotlib' in sys.modules, 'mlflow' in sys.modules)") % (str(ROOT), str(ROOT / "tests"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.run([sys.executable, "-c", code], env={**env, "WORKFLOW_ROOT": str(train_root)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["before False False", "after False False"]


# ------------------------------------------------------------------ run report

RECORD = {
    "flow": "model_training", "backend": "host", "status": "failed",
    "started_at": "2026-01-02T03:04:05+00:00", "finished_at": "2026-01-02T03:04:17+00:00",
    "params": {"epochs": "10", "data_path_a": "/data/a.csv"},
    "stages": {
        "load_a": {"status": "succeeded", "seconds": 1.25, "outputs": {"datasetA": "f" * 64}, "log": "/x/logs/load_a.log",
                   "peak_rss_mb": 152.4, "rows_in": 1000, "rows_out": 1000, "cached": False},
        "load_b": {"status": "failed", "seconds": 0.5, "outputs": {}, "log": "/x/logs/load_b.log",
                   "error": "exit status 1: input data_path: <bad> value", "exit_code": 1},
        "merge": {"status": "skipped", "seconds": 0.0, "outputs": {}},
        "train": {"status": "succeeded", "seconds": 3.0, "cached": True, "log": "/x/logs/train.log",
                  "outputs": {"model": "a" * 64, "report": "b" * 64}, "formats": {"model": "skops", "report": "html"}},
    },
}
ORDER = ["load_a", "load_b", "merge", "train"]
EDGES = [("load_a", "merge"), ("load_b", "merge"), ("merge", "train")]


HEADLINE = {"hold-out accuracy": 0.933, "macro F1": 0.933, "final loss": 0.2}


@pytest.fixture(scope="module")
def run_page():
    record = {**RECORD, "outputs": {"report": {"path": "/x/outputs/report.html", "sha256": "b" * 64}}}
    return run_report.run_report(record, ORDER, EDGES, {"metrics": HEADLINE})


def test_run_report_draws_the_dag_with_each_stage_and_edge(run_page):
    svg = run_page[run_page.index("<svg"):run_page.index("</svg>")]
    for name in ORDER:
        assert f">{name}</text>" in svg
    assert svg.count('marker-end="url(#arrow)"') == len(EDGES)
    assert "succeeded · 1.2 s" in svg and "failed · 0.5 s" in svg and "cached" in svg
    assert "<title>exit status 1: input data_path: &lt;bad&gt; value</title>" in svg  # the error on hover
    assert ">skipped</text>" in svg  # no duration for a stage that never ran
    x = {name: float(re.search(rf'<a href="#stage-{name}">(?:<title>[^<]*</title>)?<rect x="([\d.]+)"', svg).group(1))
         for name in ORDER}
    assert x["load_a"] == x["load_b"] < x["merge"] < x["train"]  # columns by depth: every edge points right


def test_run_report_table_links_logs_and_outputs_relatively(run_page):
    refs = references(run_page)
    assert {"logs/load_a.log", "logs/load_b.log", "load_a/outputs/datasetA", "train/outputs/model",
            "outputs/report.html", "run.json"} <= set(refs)
    assert not any(ref.startswith("/") for ref in refs)
    assert "152 " in run_page.replace("<", " ") and "1,000 → 1,000" in run_page  # peak MB, rows in → out
    assert_self_contained(run_page)


def test_a_stage_outputs_link_opens_a_page_or_says_what_it_downloads(run_page):
    """A stage's outputs have bare names (no extension), which a browser cannot show: one the flow publishes
    links to its copy outputs/<name>.<format>, any other downloads under a name with its format, and says so."""
    train_row = run_page[run_page.index('id="stage-train"'):].split("</tr>")[0]
    assert '<a href="outputs/report.html">report</a>' in train_row and "train/outputs/report" not in train_row
    assert '<a href="train/outputs/model" download="model.skops">model</a> (skops model, downloads)' in train_row
    load_row = run_page[run_page.index('id="stage-load_a"'):].split("</tr>")[0]
    assert 'download="datasetA">datasetA</a> (file, downloads)' in load_row  # no format recorded (an older run.json)


def test_run_report_shows_errors_escaped_and_dashes_for_missing_fields(run_page):
    assert "input data_path: &lt;bad&gt; value" in run_page
    merge_row = run_page[run_page.index('id="stage-merge"'):].split("</tr>")[0]
    assert merge_row.count(report.DASH) >= 4  # peak MB, rows, cached, log: not recorded for a skipped stage


def test_run_report_shows_the_headline_as_cards(run_page):
    for label, value in HEADLINE.items():
        assert card(label, value) in run_page
    assert card("status", "failed") in run_page and card("wall time", "12 s") in run_page


def test_run_report_escapes_every_value_from_run_json():
    evil = '<script>pwned()</script><img src=x onerror="pwned()">'
    record = {**RECORD, "flow": evil, "backend": evil, "status": evil, "started_at": evil, "params": {evil: evil},
              "stages": {"load_a": {"status": evil, "error": evil, "log": evil, "cached": evil,
                                    "outputs": {evil: "e" * 64, "javascript:pwned()": "e" * 64}}},
              "outputs": {evil: {"path": f"/x/outputs/{evil}", "sha256": evil}}}
    page = run_report.run_report(record, ORDER, EDGES, {evil: {evil: evil}})
    assert "<script" not in page and "<img" not in page and page.count("&lt;script&gt;") >= 11
    assert 'href="load_a/outputs/javascript%3Apwned%28%29"' in page  # a file name, never a javascript: URL
    assert_self_contained(page)


def test_page_helpers_escape_whatever_is_not_marked_as_markup():
    assert report.section("<h>", "<b>text</b>", report.Html("<i>markup</i>")) == \
        "<section><h2>&lt;h&gt;</h2>&lt;b&gt;text&lt;/b&gt;<i>markup</i></section>"
    assert report.Html('<a title="{}">{:.1f} {}</a>').format('"><b>', 2.25, report.Html("<br>")) == \
        '<a title="&quot;&gt;&lt;b&gt;">2.2 <br></a>'
    assert report.Html("<br>").join(["<b>", report.Html("<i>")]) == "&lt;b&gt;<br><i>"


def test_run_report_without_outputs_says_so():
    page = run_report.run_report({**RECORD, "stages": {}}, ORDER, EDGES)
    assert "No outputs: the flow did not finish." in page and "outputs/" not in page
    assert page.count('class="status pending"') == len(ORDER)
    assert 'class="label">hold-out' not in page


def test_headlines_come_from_json_outputs_that_have_one(tmp_path):
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "scores.json").write_text(json.dumps({"headline": HEADLINE, "other": 1}))
    (tmp_path / "outputs" / "plain.json").write_text(json.dumps({"accuracy": 1.0}))
    (tmp_path / "outputs" / "page.html").write_text('{"headline": {"x": 1}}')
    record = {"outputs": {name: {"path": f"/elsewhere/outputs/{file}", "sha256": "0" * 64}
                          for name, file in (("scores", "scores.json"), ("plain", "plain.json"), ("page", "page.html"),
                                             ("gone", "gone.json"))}}
    found = run_report.headlines(tmp_path, record)
    assert found == {"scores": HEADLINE} and list(found["scores"]) == list(HEADLINE)  # order kept
    assert run_report.headlines(tmp_path, {"outputs": {"model": "/old/run.json/style"}}) == {}


# ------------------------------------------------------------------ CLI summary and progress


def test_summary_table_has_rows_and_cached_with_dashes_when_missing():
    lines = summary(RECORD).splitlines()
    assert lines[0].split() == ["task", "status", "seconds", "rows", "cached"]
    assert lines[1].split() == ["load_a", "succeeded", "1.25", "1,000", "→", "1,000", "no"]
    assert lines[2].split() == ["load_b", "failed", "0.50", report.DASH, report.DASH]
    assert lines[4].split() == ["train", "succeeded", "3.00", report.DASH, "yes"]
    assert len({line.index(line.split()[1]) for line in lines}) == 1  # the status column lines up


def test_headline_text_lines_up_labels_and_values():
    assert headline_text("scores", HEADLINE).splitlines() == [
        "scores headline:", "  hold-out accuracy  0.933", "  macro F1           0.933", "  final loss         0.2"]


def test_train_headline_holds_what_the_cli_printed_before():
    metrics = {**METRICS, "loss_per_epoch": [0.9, 0.05374], "holdout_loss_per_epoch": [0.8, 0.07129]}
    assert train.headline(metrics) == {
        "hold-out accuracy": 0.933, "macro F1": 0.933, "train rows": 120, "test rows": 30, "epochs": 2,
        "final loss": 0.0537, "hold-out loss": 0.0713, "F1 setosa": 1.0, "F1 versicolor": 0.889, "F1 virginica": 0.909}


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_in_a_terminal_is_one_updating_line():
    stream, ticks = Terminal(), iter([0.0, 1.0, 2.0, 3.0])
    progress = Progress(3, stream=stream, clock=lambda: next(ticks))
    for step in (1, 2, 3):
        progress.step(step, loss=0.5 / step)
    out = stream.getvalue()
    assert out.count("\r") == 3 and out.count("\n") == 1 and out.endswith("\n")
    assert "[######..............] epoch 1/3: loss 0.5000, 1.0 s, ETA 2.0 s" in out
    assert "epoch 3/3: loss 0.1667, 3.0 s, ETA 0.0 s" in out


def test_progress_in_a_log_is_one_plain_line_per_step(caplog):
    stream = io.StringIO()
    progress = Progress(2, stream=stream, clock=iter([0.0, 1.0, 2.0]).__next__)
    with caplog.at_level(logging.INFO, logger="stageflow"):
        progress.step(1, loss=0.25)
        progress.step(2, loss=0.125)
    assert stream.getvalue() == ""
    assert caplog.messages == ["epoch 1/2: loss 0.2500, 1.0 s, ETA 1.0 s", "epoch 2/2: loss 0.1250, 2.0 s, ETA 0.0 s"]


@pytest.mark.parametrize("seconds, text", [(0.04, "0.0 s"), (59.94, "59.9 s"), (65, "1m05s"), (3725, "1h02m")])
def test_durations_read_well(seconds, text):
    assert duration(seconds) == text


def test_progress_line_without_values():
    assert progress_line("batch", 1, 4, 2.0, {}) == "batch 1/4: 2.0 s, ETA 6.0 s"


def test_a_report_on_1500_classes_stays_small_and_says_what_it_leaves_out():
    classes = [f"class-{i:04d}" for i in range(1500)]
    per_class = {c: {"precision": 0.5, "recall": 0.5, "f1": (i % 100) / 100, "support": 1 + i % 3}
                 for i, c in enumerate(classes)}
    metrics = {**METRICS, "classes": classes, "per_class": per_class,
               "confusion_nonzero": [[i, (i * 7) % 1500, 1] for i in range(1500)],
               "class_counts": {"train": {c: 4 + i % 5 for i, c in enumerate(classes)},
                                "test": {c: 1 + i % 3 for i, c in enumerate(classes)}}}
    del metrics["confusion_matrix"]
    page = report.training_report(metrics)
    assert len(page.encode()) < 300_000  # it was 324 MB
    confusion, _, balance = plots(page)
    shown_classes = largest = report.largest_classes(metrics, 30)
    assert len(largest) == 30 and sum(1 for r in confusion.iter("rect")) == 30 * 30
    assert len([r for r in balance.iter("rect") if r.find("title") is not None]) == 2 * 30
    sizes = {c: metrics["class_counts"]["train"][c] + metrics["class_counts"]["test"][c] for c in classes}
    assert min(sizes[c] for c in shown_classes) >= max(sizes[c] for c in classes if c not in shown_classes)
    text = visible(page)
    assert text.count("the 30 largest of 1,500 classes (metrics.json holds every class)") == 2
    assert "The 25 classes with the lowest F1 of 1,500; F1 over all of them: lowest 0.000, median 0.500, highest " \
           "0.990. metrics.json holds every class." in text
    rows = re.findall(r"<tr><td>class-\d{4}</td>", page)
    assert len(rows) == 25  # the per-class table: only those
    assert "1,500 classes" in text


def test_the_confusion_matrix_of_chosen_classes_comes_from_either_form():
    dense = {"classes": ["a", "b", "c"], "confusion_matrix": [[1, 2, 3], [4, 5, 6], [7, 8, 9]]}
    sparse = {"classes": ["a", "b", "c"], "confusion_nonzero": [[t, p, 3 * t + p + 1] for t in range(3) for p in range(3)]}
    assert report.confusion_of(dense, ["a", "c"]) == report.confusion_of(sparse, ["a", "c"]) == [[1, 3], [7, 9]]


def test_early_stopping_says_when_it_stopped_and_which_epoch_the_model_is():
    metrics = {**METRICS, "early_stopping": 3, "tolerance": 1e-4, "validation_fraction": 0.1, "best_epoch": 2,
               "stopped_early": True, "epochs": 20, "n_validation": 12,
               "validation_loss_per_epoch": [0.7, 0.4, 0.41, 0.42]}
    page = report.training_report(metrics)
    text = visible(page)
    assert ("early stopping after 3 epochs without a fall of the validation loss by 0.0001 (validation: 10% of the "
            "training rows); stopped after epoch 4, the model is epoch 2's") in text
    assert card("epochs", "4 of 20") in page
    assert "(12 of the training rows held out for early stopping)" in text
    drawing = plots(page)[1]
    assert len(drawing.findall("polyline")) == 3 and "validation" in {shown(label) for label in texts(drawing)}
