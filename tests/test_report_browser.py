"""report.html rendered by a real browser: headless Chromium (Debian's `chromium`; `.ci/run` installs it) lays the
page out at 1280 px and a small script measures what a reader would see: every image decoded (naturalWidth > 0),
no horizontal overflow of the page (scrollWidth <= clientWidth, and no element sticking out of the viewport
outside a table's own scroll box), and the setup block present. Parsing the HTML cannot tell any of these.

The report itself has no scripts; the probe is added to a copy of it. Chromium is driven with `--dump-dom`, which
prints the DOM after the page has loaded, and the probe leaves its measurements in that DOM. A page made to fail
(a wide block, a broken image) is measured first, so the probe is known to see what it checks for.

Screenshots (`--screenshot`, the 1280 x 900 viewport): the page's first screen, which must hold the title, the
setup block's command and the sources of variation the intervals include, and one figure, cut out of the page
(its head and the figure's section only, so the figure is at the top of the viewport), which must show the
figure's own pixels: the first arm's colour on a white page.
"""

from __future__ import annotations

import html
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from transferlab.analysis.build import build_report

WIDTH = 1280
CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
                 if p and Path(p).exists()), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium to render report.html in: install Debian's "
                                "chromium (apt-get install -y chromium; .ci/run does it when run as root)")

# Without the background-networking flags Chromium waits for the network, which an offline machine never answers.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         f"--window-size={WIDTH},900"]

PROBE = """<script>
window.addEventListener('load', function () {
  var doc = document.documentElement, vw = doc.clientWidth, out = [];
  document.querySelectorAll('body *').forEach(function (el) {
    if (el.closest('.scroll') || el.tagName === 'SCRIPT') return;  // a wide table scrolls in its own box
    var r = el.getBoundingClientRect();
    if (r.width > 0 && r.right > vw + 1) out.push(el.tagName + '.' + el.className + ' ' + Math.round(r.right));
  });
  var boxes = [].map.call(document.querySelectorAll('.scroll'), function (b) {
    return {overflow: getComputedStyle(b).overflowX, width: b.getBoundingClientRect().width};
  });
  var images = [].map.call(document.images, function (i) {
    return {alt: i.alt, complete: i.complete, naturalWidth: i.naturalWidth, width: i.getBoundingClientRect().width};
  });
  var setup = document.getElementById('setup');
  var top = function (sel) { var e = document.querySelector(sel); return e ? e.getBoundingClientRect().top : null; };
  var tops = {title: top('h1'), setup: top('#setup h2'), command: top('#setup pre'), kv: top('#setup table.kv'),
              height: window.innerHeight};
  var p = document.createElement('pre');
  p.id = 'probe';
  p.textContent = JSON.stringify({clientWidth: vw, scrollWidth: doc.scrollWidth, bodyScrollWidth:
    document.body.scrollWidth, outside: out.slice(0, 20), boxes: boxes, images: images,
    setup: setup ? setup.innerText : null, tops: tops});
  document.body.appendChild(p);
});
</script>"""


def measure(page: Path, tmp: Path) -> dict:
    """Load `page` (with the probe added) in headless Chromium at WIDTH px; the probe's measurements."""
    probed = tmp / f"probed_{page.name}"
    probed.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    p = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp / 'chromium-profile'}", "--dump-dom",
                        probed.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="probe">(.*?)</pre>', p.stdout, re.S)
    assert found, f"the probe did not run (exit {p.returncode}): {p.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


def test_the_probe_sees_overflow_and_broken_images(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text("<!doctype html><html><body><div style='width:2000px'>wide</div>"
                   "<img alt='broken' src='data:image/png;base64,AAAA'><div class='scroll' style='overflow-x:auto'>"
                   "<table><tr><td style='white-space:nowrap'>" + "x" * 600 + "</td></tr></table></div>"
                   "</body></html>")
    m = measure(bad, tmp_path)
    assert m["clientWidth"] == WIDTH
    assert m["scrollWidth"] > m["clientWidth"] and any(o.startswith("DIV") for o in m["outside"])
    assert m["images"] == [{"alt": "broken", "complete": True, "naturalWidth": 0, "width": m["images"][0]["width"]}]
    assert m["setup"] is None


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    """The report of a written sweep: 3 arms x 3 n x 3 seeds, a failed run, a long command line in sweep.json."""
    from test_report_grouping import config, point, put, record, write_sweep

    root = tmp_path_factory.mktemp("browser_sweep")
    points = []
    for n in (2, 5, 20):
        for seed in (0, 1, 2):
            for ov, acc in (("transfer=scratch", 0.5), ("transfer.freeze=0", 0.7), ("transfer.freeze=2", 0.65)):
                rec = record(config(f"target.n_per_class={n}", f"seed={seed}", ov),
                             acc + 0.02 * seed + 0.1 * math.log10(n))
                rec["metrics"].update({"test/balanced_acc": acc - 0.1, "test/class_counts": [70, 10, 10, 5, 5]})
                rec["target_data"] = {"sizes": {"pool": 500, "val": 100, "test": 100, "train": 5 * n}}
                folder = f"{ov},target.n_per_class={n},seed={seed}"
                points.append(point(folder, put(root, folder, rec)))
    failed = record(config("target.n_per_class=5", "seed=9", "transfer.freeze=1"), 0.0, status="failed")
    points.append(point("failed_point", put(root, "failed_point", failed), status="failed",
                        error="RuntimeError: boom"))
    write_sweep(root, points)
    record_path = root / "sweep.json"
    sweep = json.loads(record_path.read_text())
    sweep["launches"][0]["argv"] = ["-m", "experiment=freeze_vs_n", "seed=0,1,2", "target.n_per_class=2,5,20",
                                    "hydra.sweep.dir=" + "/very/long/path" * 12, "transfer.freeze=0,2"]
    record_path.write_text(json.dumps(sweep))
    out = root / "report"
    build_report(root, out, n_boot=50)
    return out / "report.html"


def test_report_renders_in_chromium_without_overflow(page, tmp_path):
    m = measure(page, tmp_path)
    assert m["clientWidth"] == WIDTH
    assert m["scrollWidth"] <= m["clientWidth"] and m["bodyScrollWidth"] <= m["clientWidth"], m
    assert m["outside"] == [], m["outside"]
    assert all(b["overflow"] == "auto" and b["width"] <= WIDTH for b in m["boxes"])
    figures = sorted((page.parent / "figures").glob("*.png"))
    assert len(m["images"]) == len(figures) >= 5
    for img in m["images"]:  # decoded, and scaled to the page when wider
        assert img["complete"] and img["naturalWidth"] > 0 and 0 < img["width"] <= WIDTH, img
    setup = m["setup"]
    assert setup is not None and setup.startswith("Setup")
    for shown in ("python -m transferlab.train -m experiment=freeze_vs_n", "varied across runs", "target training",
                  "split sizes", "sha256", "versions"):
        assert shown in setup, shown


def screenshot(page: Path, tmp: Path, name: str) -> "object":
    """The first WIDTH x 900 screen of `page` as headless Chromium draws it, as an RGB array in [0, 1]."""
    import matplotlib.image as mpimg

    png = tmp / f"{name}.png"
    p = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp / 'chromium-profile'}", f"--screenshot={png}",
                        page.as_uri()], capture_output=True, text=True, timeout=120)
    assert png.exists(), f"no screenshot (exit {p.returncode}): {p.stderr[-2000:]}"
    return mpimg.imread(png)[..., :3]


def test_first_screen_shows_the_title_the_command_and_what_the_intervals_include(page, tmp_path):
    m = measure(page, tmp_path)
    tops = m["tops"]
    for key in ("title", "setup", "command", "kv"):  # all on the first screen, in reading order
        assert tops[key] is not None and 0 <= tops[key] < tops["height"], (key, tops)
    assert tops["title"] < tops["setup"] < tops["command"] < tops["kv"]
    assert "what the intervals over seeds include" in m["setup"] and "training seed (seed): included" in m["setup"]
    shot = screenshot(page, tmp_path, "first_screen")
    assert shot.shape[:2] == (900, WIDTH)
    dark = (shot.max(axis=2) < 0.35).mean()  # text drawn on the white page
    assert 0.005 < dark < 0.5, dark


def test_one_figure_renders_in_the_screenshot(page, tmp_path):
    from transferlab.analysis.plots import PALETTE

    text = page.read_text(encoding="utf-8")
    head, body = text.split("<body>", 1)
    start = body.index("<section id='figures'>")
    end = body.find("<h2>", body.index("<img", start))  # the next figure's heading
    only = tmp_path / "figure.html"
    only.write_text(head + "<body>" + body[start:end] + "</section></body></html>", encoding="utf-8")
    shot = screenshot(only, tmp_path, "figure")
    rgb = tuple(int(PALETTE[0][i:i + 2], 16) / 255 for i in (1, 3, 5))  # the first arm's colour
    near = (abs(shot - rgb) < 0.08).all(axis=2).mean()
    assert near > 1e-4, near  # the arm's markers and bars are on screen (a few hundred pixels)
    assert (shot.min(axis=2) > 0.95).mean() > 0.3  # and the page around them is white, not a blank or error page
