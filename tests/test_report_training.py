"""The report's training section, on run folders written by hand (no training): curves, metrics, grids."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from curate.report import build_report
from curate.report.curves import Series, line_chart, nice_ticks, thin
from curate.report.runs import read_metrics
from tests.conftest import REPO
from tests.test_report import chromium, dump_dom

SVG = "{http://www.w3.org/2000/svg}"
AUGMENT_P = [0.0, 0.05, 0.1, 0.15, 0.12]
LOSS_G = [2.0, 1.5, math.nan, 1.0, 0.5]  # the NaN is left out of the curve
LOSS_D = [1.0, 0.9, 0.8, 0.7, 0.6]
ROWS = [["label_0"], ["label_1", "label_2"]]


def write_run(root: Path) -> Path:
    """A 10-kimg run: five ticks (FID measured at two), a `curate metrics` line, two bad lines, grids."""
    from PIL import Image

    run = root / "runs" / "colours-auto-16-cond3"
    run.mkdir(parents=True)
    options = {
        "options": {"kimg": 10, "cfg": "auto", "aug": "ada"},
        "label_names": ["label_0", "label_1", "label_2"],
    }
    (run / "options.json").write_text(json.dumps(options), encoding="utf-8")
    lines = []
    for tick in range(1, 6):
        record = {"tick": tick, "kimg": 2.0 * tick, "nimg": 2000 * tick, "step": 10 * tick}
        record |= {"sec_per_kimg": 3.0, "images_per_sec": 333.0, "time": "2025-01-01T00:00:00+00:00"}
        record |= {
            "loss_G": LOSS_G[tick - 1],
            "loss_D": LOSS_D[tick - 1],
            "score_real": 0.5,
            "score_fake": -0.5,
        }
        record |= {"r1": 0.1, "pl_length": 0.2, "augment_p": AUGMENT_P[tick - 1]}
        if tick in (2, 5):
            record["fid5k_full"] = {2: 55.0, 5: 40.0}[tick]
        lines.append(json.dumps(record))
        if tick == 3:  # `curate metrics` measured the 6-kimg snapshot afterwards: the lowest FID
            measured = {
                "nimg": 6000,
                "kimg": 6.0,
                "snapshot": "snapshot-000006.pt",
                "source": "curate metrics",
            }
            lines.append(json.dumps({**measured, "fid5k_full": 31.5, "kid5k_full": 0.02}))
    lines += [
        "[1, 2]",
        '{"tick": 6, "kimg": 12.0, "loss_G": 0.4, "loss_D',
    ]  # not a record; cut short by a kill
    (run / "metrics.jsonl").write_text("\n".join(lines), encoding="utf-8")
    Image.new("RGB", (48, 32), (200, 30, 30)).save(run / "fakes-000010.png")
    (run / "fakes-000010.json").write_text(json.dumps({"rows": ROWS}), encoding="utf-8")
    Image.new("RGB", (48, 32), (0, 0, 0)).save(run / "fakes-000004.png")  # older: not shown
    Image.new("RGB", (64, 64), (30, 30, 200)).save(run / "reals.png")
    (run / "snapshot-000010.pt").write_bytes(b"not read")
    queued = root / "runs" / "queued"
    queued.mkdir()
    (queued / "options.json").write_text(json.dumps({"options": {"kimg": 100}}), encoding="utf-8")
    (root / "runs" / "not-a-run").mkdir()  # no options.json
    return run


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("training-report") / "ws"
    run = write_run(root)
    result = build_report(root, progress=False)
    return run, result, result.page.read_text(encoding="utf-8")


def charts(page: str) -> dict[str, ET.Element]:
    """The page's curves by title, parsed as XML."""
    found = {}
    for source in re.findall(r'<svg xmlns="http://www.w3.org/2000/svg" class="curve".*?</svg>', page, re.S):
        svg = ET.fromstring(source)
        found[svg.find(f"{SVG}text[@class='title']").text] = svg
    return found


def polylines(svg: ET.Element) -> dict[str, list[tuple[float, float]]]:
    return {
        line.get("data-series"): [tuple(map(float, p.split(","))) for p in line.get("points").split()]
        for line in svg.iter(f"{SVG}polyline")
    }


def y_of(svg: ET.Element, value: float) -> float:
    """The pixel row of `value`, interpolated from the chart's labelled y ticks."""
    ticks = [(float(g.find(f"{SVG}text").text.replace(",", "")), float(g.find(f"{SVG}line").get("y1")))
             for g in svg.iter(f"{SVG}g") if g.get("class") == "ytick"]  # fmt: skip
    (v0, y0), (v1, y1) = ticks[0], ticks[-1]
    return y0 + (value - v0) * (y1 - y0) / (v1 - v0)


def x_of(svg: ET.Element, value: float) -> float:
    ticks = [(float(g.find(f"{SVG}text").text.replace(",", "")), float(g.find(f"{SVG}line").get("x1")))
             for g in svg.iter(f"{SVG}g") if g.get("class") == "xtick"]  # fmt: skip
    (v0, x0), (v1, x1) = ticks[0], ticks[-1]
    return x0 + (value - v0) * (x1 - x0) / (v1 - v0)


def test_metrics_log_keeps_ticks_and_metric_lines_and_counts_bad_lines(report):
    log = read_metrics(report[0] / "metrics.jsonl")
    assert [t["tick"] for t in log.ticks] == [1, 2, 3, 4, 5] and log.skipped == 2
    assert log.measured == {
        "fid5k_full": [(4.0, 55.0), (6.0, 31.5), (10.0, 40.0)],
        "kid5k_full": [(6.0, 0.02)],
    }
    assert log.series("augment_p") == [(2.0 * (i + 1), p) for i, p in enumerate(AUGMENT_P)]


def test_loss_and_augment_curves_follow_the_data(report):
    found = charts(report[2])
    assert set(found) == {"Losses", "Discriminator scores", "Augmentation probability", "Regularisers",
                          "Speed", "fid5k_full", "kid5k_full"}  # fmt: skip
    losses = found["Losses"]
    legend = [
        t.text for g in losses.iter(f"{SVG}g") if g.get("class") == "legend" for t in g.iter(f"{SVG}text")
    ]
    assert legend == ["loss_G", "loss_D"]
    lines = polylines(losses)
    assert len(lines["loss_G"]) == 4 and len(lines["loss_D"]) == 5  # the NaN tick skipped
    kept = [(2.0 * (i + 1), v) for i, v in enumerate(LOSS_G) if not math.isnan(v)]
    for (px, py), (kimg, value) in zip(lines["loss_G"], kept, strict=True):
        assert px == pytest.approx(x_of(losses, kimg), abs=0.02) and py == pytest.approx(
            y_of(losses, value), abs=0.02
        )
    ticks = [g.find(f"{SVG}text").text for g in losses.iter(f"{SVG}g") if g.get("class") == "ytick"]
    assert ticks == ["0.5", "1.0", "1.5", "2.0"]  # round numbers spanning the values
    augment = found["Augmentation probability"]
    points = polylines(augment)["augment_p"]
    assert len(points) == 5 and points[-1][1] == pytest.approx(y_of(augment, AUGMENT_P[-1]), abs=0.02)
    assert points[-1][0] == pytest.approx(x_of(augment, 10.0), abs=0.02)
    y_ticks = [g.find(f"{SVG}text").text for g in augment.iter(f"{SVG}g") if g.get("class") == "ytick"]
    assert y_ticks[0] == "0.00"  # p starts at zero


def test_the_lowest_fid_is_marked_and_printed(report):
    page, fid = report[2], charts(report[2])["fid5k_full"]
    points = polylines(fid)["fid5k_full"]
    assert [round(x) for x in (x_of(fid, 4), x_of(fid, 6), x_of(fid, 10))] == [round(p[0]) for p in points]
    best = next(g for g in fid.iter(f"{SVG}g") if g.get("class") == "best")
    assert (float(best.get("data-x")), float(best.get("data-y"))) == (6.0, 31.5)
    circle = best.find(f"{SVG}circle")
    assert (float(circle.get("cx")), float(circle.get("cy"))) == pytest.approx(points[1], abs=0.01)
    assert best.find(f"{SVG}text").text == "31.5 at 6 kimg"
    assert "lowest fid5k_full: <b>31.5</b> at kimg 6 (3 measured)" in page
    assert "lowest kid5k_full: <b>0.02</b> at kimg 6 (1 measured)" in page


def test_the_run_shows_its_progress_grids_and_notes(report):
    run, result, page = report
    assert result.runs == 2 and "Training (2 runs)" in page and "not-a-run" not in page
    assert "<td>kimg</td><td>10 of 10</td>" in page and "<td>labels</td><td>3</td>" in page
    assert "<td>newest snapshot</td><td>snapshot-000010.pt</td>" in page
    assert "2 unreadable lines in metrics.jsonl skipped" in page
    queued = page[page.index('data-run="queued"') :]
    assert "not started" in queued and "<svg" not in queued.split("</section>")[0]
    sources = re.findall(r'<img class="(\w+)" src="([^"]+)"', page)
    assert sources == [
        ("fakes", f"runs/{run.name}/fakes-000010.png"),
        ("reals", f"runs/{run.name}/reals.png"),
    ]
    for _, source in sources:
        assert (result.page.parent / source).read_bytes() == (run / Path(source).name).read_bytes()
    assert "<li>label_0</li><li>label_1, label_2</li>" in page


def test_charts_draw_one_point_and_thin_long_series():
    one = ET.fromstring(
        line_chart([Series("fid50k_full", [(120.0, 3.5)])], title="t", y_label="FID", best="min")
    )
    assert len(list(one.iter(f"{SVG}circle"))) == 2  # the point's dot and the best mark
    x_ticks = [g.find(f"{SVG}text").text for g in one.iter(f"{SVG}g") if g.get("class") == "xtick"]
    assert x_ticks == ["100", "110", "120", "130", "140"]
    assert nice_ticks(0.013, 0.87) == [0.0, 0.25, 0.5, 0.75, 1.0] and nice_ticks(2, 9.5) == [2, 4, 6, 8, 10]
    assert nice_ticks(5, 5) == [4.5, 4.75, 5.0, 5.25, 5.5]  # one value: a span around it
    points = [(float(i), math.sin(i / 50)) for i in range(10_000)]
    points[7777] = (7777.0, 9.0)  # a spike survives thinning
    thinned = thin(points)
    assert len(thinned) <= 2000 and (7777.0, 9.0) in thinned and thinned[-1] == points[-1]
    chart = ET.fromstring(line_chart([Series("loss", [*points, (1.0, math.inf)])], title="t", y_label="y"))
    assert len(polylines(chart)["loss"]) == len(thinned) and not list(chart.iter(f"{SVG}circle"))


def test_a_workspace_without_runs_has_no_training_section_and_torch_is_never_imported(tmp_path):
    bare = build_report(tmp_path / "bare", progress=False)
    assert bare.runs == 0 and "Training" not in bare.page.read_text(encoding="utf-8")
    write_run(tmp_path / "ws")
    code = (
        "import sys; from curate.report import build_report; "
        f"r = build_report({str(tmp_path / 'ws')!r}, progress=False); "
        "assert 'torch' not in sys.modules, 'torch imported'; print(r.runs)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0 and done.stdout.strip() == "2", done.stderr[-2000:]


def test_the_training_section_renders_in_chromium(report, tmp_path):
    browser = chromium()
    if browser is None:
        pytest.skip("no chromium here")
    done = dump_dom(browser, report[1].page.parent, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    assert 'data-broken-images="0"' in dom and 'data-empty-charts="0"' in dom, dom[:500]
    rendered = re.findall(r'<svg[^>]*class="curve"[^>]*data-rendered="([\d.]+)x([\d.]+):(\d+)"', dom)
    assert len(rendered) == 7 and all(
        float(w) >= 520 and float(h) >= 250 and int(n) > 0 for w, h, n in rendered
    )
    widths = dict(re.findall(r'<img class="(\w+)"[^>]*data-natural-width="(\d+)"', dom))
    assert widths == {"fakes": "48", "reals": "64"}
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
