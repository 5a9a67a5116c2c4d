"""Both reports are inert in a real browser: values from run.json and the metrics are shown as text, and
nothing in them can run a script or make the page fetch anything.

Chromium (Debian's `chromium`, which .ci/run installs) opens each page headless, driven over the DevTools
protocol on a pipe (--remote-debugging-pipe: no port, no websocket library). Every request the page makes
and whether a script ran are read from the browser itself, not guessed from the HTML.
"""

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stageflow.runtime import report

from conftest import ROOT

MARK = "window.pwned = 1"  # what any script that managed to run sets
HOSTILE = [  # values an attacker can put in run.json or the metrics, each of which must stay text
    f"<script>{MARK}</script>",
    f'<img src="http://127.0.0.1:9/beacon.png" onerror="{MARK}">',
    f'"><svg onload="{MARK}"><a href="javascript:{MARK}">click</a>',
    "<style>@import url(http://127.0.0.1:9/x.css);</style>",
    f"</title></style></svg><iframe src=\"javascript:{MARK}\"></iframe>",
    r"$\pwned{$ is mathtext to a plotting library",
]


def hostile(i):
    return HOSTILE[i % len(HOSTILE)]


def crafted_metrics():
    classes = [hostile(0), hostile(1), hostile(5)]
    score = {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    feature = {"type": hostile(2), "min": 0.0, "max": 1.0, "mean": 0.5, "std": 0.1, "missing": 0}
    return {"accuracy": 0.5, "macro_f1": 0.5, "classes": classes, "confusion_matrix": [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
            "per_class": {c: score for c in classes}, "loss_per_epoch": [0.9, 0.4], "n_train": 3, "n_test": 3,
            "holdout_loss_per_epoch": [0.8, 0.5], "epochs": 2, "class_counts": {hostile(0): {c: 1 for c in classes}},
            "hidden_layers": hostile(3), "learning_rate": hostile(4), "feature_names": [hostile(1), hostile(2)],
            "features": {hostile(1): feature, hostile(2): feature}, "label": {"column": hostile(3), "type": hostile(4)},
            "data": {"sources": [{"input": hostile(0), "sha256": hostile(1), "rows": 1, "format": hostile(2)}],
                     "overlap": 0, "merged_rows": 3, "rows": 3, "dropped": 1, "dropped_by": {hostile(3): 1}},
            "model": {"estimator": hostile(0), "preprocessing": hostile(1), "format": hostile(2),
                      "trusted_types": [hostile(3)]}, "scikit_learn_version": hostile(4), "model_sha256": hostile(1)}


def crafted_run_dir(path):
    """A run directory as `stageflow report` finds it, every free-text field of it hostile."""
    metrics = crafted_metrics()
    outputs = path / "train" / "outputs"
    outputs.mkdir(parents=True)
    (outputs / "metrics").write_text(json.dumps(metrics))
    (outputs / "report").write_text(report.training_report(metrics))  # as the train stage writes it
    published = path / "outputs"  # as the runner publishes the flow's outputs
    published.mkdir()
    (published / "report.html").write_text((outputs / "report").read_text())
    (published / "metrics.json").write_text(json.dumps({**metrics, "headline": {hostile(i): hostile(i + 1)
                                                                              for i in range(len(HOSTILE))}}))
    # Free text where run.json has text; what `stageflow report` checks the shape of (times, statuses) is valid.
    record = {"flow": hostile(0), "backend": hostile(1), "status": hostile(2), "started_at": "2026-01-02T03:04:05+00:00",
              "outputs": {"report": {"path": str(published / "report.html"), "sha256": hostile(1)},
                          "metrics": {"path": str(published / "metrics.json"), "sha256": hostile(2)},
                          hostile(2): {"path": hostile(3), "sha256": hostile(4)}},
              "params": {hostile(i): hostile(i + 1) for i in range(len(HOSTILE))},
              "stages": {"load_a": {"status": "failed", "error": hostile(0), "log": hostile(1), "upstream": [],
                                    "outputs": {hostile(i): hostile(i + 1) for i in range(len(HOSTILE))}},
                         "train": {"status": "succeeded", "seconds": 1.0, "cached": hostile(4), "upstream": [], "outputs": {
                             "metrics": hostile(0), "report": hostile(1), hostile(2): hostile(3)}}}}
    (path / "run.json").write_text(json.dumps(record))
    return path


class Chromium:
    """A headless Chromium and one page, spoken to over the DevTools protocol on fds 3 and 4."""

    def __init__(self, exe, profile):
        to_browser, self._commands = os.pipe()
        self._replies, from_browser = os.pipe()
        # above 3 and 4, so that placing one there cannot close the other; close-on-exec, so that only the
        # copies dup2 makes at 3 and 4 reach the browser (close_fds=False: Popen would close those too)
        child = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_browser, from_browser)]
        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
             "--hide-scrollbars", "--window-size=1200,1600", f"--user-data-dir={profile}", "--remote-debugging-pipe",
             "about:blank"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=lambda: (os.dup2(child[0], 3), os.dup2(child[1], 4)), close_fds=False)
        for fd in (to_browser, from_browser, *child):
            os.close(fd)
        self._buffer, self._id, self.events = b"", 0, []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Network", "Runtime"):
            self.call(f"{domain}.enable", session=True)

    def _message(self, deadline):
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._replies], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(self._replies, 1 << 16) if ready else b""
            assert chunk, "chromium did not answer (exited, or took more than 20 s)"
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method, session=False, **params):
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + 20
        while True:
            reply = self._message(deadline)
            if reply.get("id") == self._id:
                assert "error" not in reply, reply
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method):
        deadline = time.monotonic() + 20
        while not any(event.get("method") == method for event in self.events):
            self.events.append(self._message(deadline))

    def open(self, url):
        """Load `url` and return every request the page made while loading it."""
        self.events.clear()
        self.call("Page.navigate", session=True, url=url)
        self.wait_for("Page.loadEventFired")
        return [event["params"]["request"]["url"] for event in self.events
                if event.get("method") == "Network.requestWillBeSent"]

    def evaluate(self, expression):
        return self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True)["result"]["value"]

    def screenshot(self, path):
        """The whole page as drawn, not only the window's height of it."""
        size = self.call("Page.getLayoutMetrics", session=True)["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        data = self.call("Page.captureScreenshot", session=True, format="png", captureBeyondViewport=True, clip=clip)
        path.write_bytes(base64.b64decode(data["data"]))

    def close(self):
        os.close(self._commands)  # the browser exits when its pipe closes
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._replies)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    exe = shutil.which("chromium")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs it")
        pytest.skip("chromium is not installed (Debian: apt-get install chromium), so the reports are not rendered")
    chromium = Chromium(exe, tmp_path_factory.mktemp("chromium-profile"))
    yield chromium
    chromium.close()


# What a page holds that could run or fetch something: script elements, on* handlers, javascript: URLs,
# frames, objects, stylesheets from elsewhere; and images that are not data: URIs.
ACTIVE = """[...document.querySelectorAll('*')].flatMap(e => [
    ...(['SCRIPT', 'IFRAME', 'FRAME', 'OBJECT', 'EMBED', 'LINK', 'BASE'].includes(e.tagName) ? [e.tagName] : []),
    ...[...e.attributes].filter(a => /^on/i.test(a.name) || /^\\s*javascript:/i.test(a.value)).map(a => a.name),
    ...(e.tagName === 'IMG' && !e.src.startsWith('data:') ? ['img ' + e.src] : [])])"""


def test_both_reports_render_crafted_values_as_text_and_run_and_fetch_nothing(browser, tmp_path):
    run_dir = crafted_run_dir(tmp_path / "run")
    proc = subprocess.run([sys.executable, "-m", "stageflow", "report", str(run_dir)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for name in ("report.html", "outputs/report.html"):
        url = (run_dir / name).as_uri()
        requests = browser.open(url)
        browser.screenshot(tmp_path / f"{name.replace('/', '-')}.png")
        assert [r for r in requests if r != url and not r.startswith("data:")] == [], name
        assert browser.evaluate("typeof window.pwned") == "undefined", name  # no script ran
        assert browser.evaluate(ACTIVE) == [], name
        text = browser.evaluate("document.body.innerText")
        shown = [value for value in HOSTILE if value in text]
        assert len(shown) >= 3, (name, text)  # the values are there, as text
        assert browser.evaluate("document.querySelectorAll('h2').length") >= 2  # and the page is laid out
    browser.open((run_dir / "outputs" / "report.html").as_uri())  # the training report's plots, drawn
    widths = browser.evaluate(PLOT_WIDTHS)
    assert len(widths) == 3 and min(widths) > 250 and max(widths) - min(widths) < 1  # side by side, scaled alike
    assert browser.evaluate(CLASHES) == []


PLOT_WIDTHS = "[...document.querySelectorAll('svg.plot')].map(svg => svg.getBoundingClientRect().width)"
# Labels as the browser drew them, in its own font: each inside its plot, and no two level ones on top of each
# other (a slanted label's box is not its outline, so slanted ones are kept apart by their spacing, tested in
# test_report.py).
CLASHES = """[...document.querySelectorAll('svg.plot')].flatMap(svg => {
    const frame = svg.getBoundingClientRect();
    const labels = [...svg.querySelectorAll('text')].map(t => [t, t.getBoundingClientRect()]);
    const outside = labels.filter(([t, b]) => b.left < frame.left || b.right > frame.right || b.top < frame.top
                                              || b.bottom > frame.bottom).map(([t]) => 'outside: ' + t.textContent);
    const level = labels.filter(([t]) => !t.hasAttribute('transform'));
    const overlaps = level.flatMap(([t, a], i) => level.slice(i + 1).filter(([u, b]) =>
        Math.min(a.right, b.right) - Math.max(a.left, b.left) > 0.5 && Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top) > 0.5
    ).map(([u]) => 'overlap: ' + t.textContent + ' / ' + u.textContent));
    return outside.concat(overlaps);
})"""


SHOTS_ENV = "STAGEFLOW_SCREENSHOTS"  # a folder to keep the screenshots in, to look at them (default: pytest's tmp)


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """The bundled flow run as a user runs it, with early stopping on so that the loss plot has all three."""
    run_dir = tmp_path_factory.mktemp("real-run")
    proc = subprocess.run([sys.executable, "-m", "stageflow", "run", "--run-dir", str(run_dir), "--no-cache",
                           "--epochs", "40", "--early-stopping", "3", "--learning-rate", "0.2"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return run_dir


def shots(tmp_path):
    folder = os.environ.get(SHOTS_ENV)
    return Path(folder) if folder else tmp_path


def test_the_training_report_says_what_was_trained_on_what(browser, real_run, tmp_path):
    metrics = json.loads((real_run / "outputs" / "metrics.json").read_text())
    browser.open((real_run / "outputs" / "report.html").as_uri())
    browser.screenshot(shots(tmp_path) / "training-report.png")
    headings = browser.evaluate("[...document.querySelectorAll('h2')].map(h => h.textContent)")
    assert headings == ["Hold-out metrics per class", "Plots", "Model", "Data", "Training settings"]
    text = browser.evaluate("document.body.innerText")
    for shown in ("MLPClassifier(hidden_layer_sizes=(16,))", "StandardScaler", *metrics["feature_names"],
                  *(source["sha256"] for source in metrics["data"]["sources"]), "early stopping",
                  f"scikit-learn\t{metrics['scikit_learn_version']}"):
        assert shown in text, shown
    assert "class\ttrain\ttest" not in text  # the class balance is a plot only
    losses = browser.evaluate("[...document.querySelectorAll('svg.plot')][1].querySelectorAll('polyline').length")
    assert losses == 3  # training, hold-out, validation
    widths = browser.evaluate(PLOT_WIDTHS)
    assert len(widths) == 3 and min(widths) > 250 and max(widths) - min(widths) < 1
    assert browser.evaluate(CLASHES) == []


LINKS = """[...document.querySelectorAll('a[href]')].filter(a => !a.getAttribute('href').startsWith('#'))
    .map(a => [a.href, a.hasAttribute('download'), (a.closest('td') || a.parentElement).textContent])"""


def test_every_link_of_the_run_report_opens_a_page_or_says_what_it_downloads(browser, real_run, tmp_path):
    """A stage output's file has no extension, so a browser cannot tell what it is: the run report links a flow
    output's published copy, which opens by its extension, and marks every other link as a download of what
    it is (a Parquet table, a skops model)."""
    browser.open((real_run / "report.html").as_uri())
    browser.screenshot(shots(tmp_path) / "run-report.png")
    links = browser.evaluate(LINKS)
    assert len(links) >= 12
    downloads = [(href, cell) for href, download, cell in links if download]
    assert {href.rsplit("/", 3)[-3] for href, _ in downloads} >= {"load_a", "load_b", "merge", "process"}
    assert all("downloads" in cell for _, cell in downloads)
    for href, download, cell in links:
        if download:
            continue
        browser.open(href)
        kind = browser.evaluate("document.contentType")
        assert kind.startswith("text/") or kind == "application/json", (href, kind)  # shown, not downloaded
        assert browser.evaluate("document.body.innerText.length") > 0, href
