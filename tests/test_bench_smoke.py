"""The benchmarks still run and print one JSON line of figures (tiny sizes: speeds are not judged)."""

from __future__ import annotations

import json
import subprocess
import sys
from unittest.mock import ANY

from tests.conftest import REPO


def run_quick(script: str) -> dict:
    """Run `tests/bench/<script> --quick` and return its one JSON line."""
    result = subprocess.run(
        [sys.executable, f"tests/bench/{script}", "--quick"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])


def test_crawl_benchmark_prints_one_json_line_of_figures(fixtures):
    figures = run_quick("crawl.py")
    assert figures["bench"] == "crawl" and figures["failed_rows"] == 0
    for key in (
        "sequential_posts_per_s",
        "curate_posts_per_s_latency",
        "curate_posts_per_s_no_latency",
        "speedup_vs_sequential",
        "rss_growth_mb_25_to_95",
    ):
        assert isinstance(figures[key], (int, float)), key
    assert figures["curate_posts_per_s_no_latency"] > 0


def test_crop_benchmark_prints_one_json_line_of_figures(fixtures):
    figures = run_quick("crop.py")
    assert figures["bench"] == "crop" and figures["images"] == 60
    assert figures["readme_images_per_s"] > 0 and figures["curate_images_per_s"] > 0
    # the boxes must agree whatever the machine's speed
    assert figures["faces_checked"] > 0 and figures["faces_matched"] == figures["faces_checked"]


def test_tag_benchmark_prints_one_json_line_of_figures(fixtures):
    figures = run_quick("tag.py")
    assert figures["bench"] == "tag" and figures["faces"] == 24 and figures["rows_ok"] == 24
    for key in ("stage_images_per_s", "bare_forward_images_per_s", "batch1_loop_images_per_s"):
        assert figures[key] > 0, key


def test_knn_benchmark_prints_one_json_line_of_figures():
    figures = run_quick("knn.py")
    assert figures["bench"] == "knn" and figures["vectors"] == 20_000
    assert figures["recall_at_k"] >= 0.95 and figures["index"]["kind"] == "ivf"


def test_filter_benchmark_prints_one_json_line_of_figures():
    figures = run_quick("filter.py")
    assert figures["bench"] == "filter" and figures["faces"] > 50 and figures["bad"] > 50
    assert 0 < figures["input_precision"] < 1 and 0 <= figures["chosen_recall"] <= 1
    found, copies = map(int, figures["copies_found"].split("/"))
    assert copies >= 12 and 0 <= found <= copies
    assert 0 < figures["nearest_similarity"] <= 1.0001


def test_train_benchmark_prints_one_json_line_of_figures():
    figures = run_quick("train.py")
    assert figures["bench"] == "train" and figures["matmul_peak_tflops"] > 0
    (run,) = figures["runs"]
    assert run["resolution"] == 16 and run["images_per_s"] > 0 and run["train_gflops_per_step"] > 0
    assert 0 < run["mfu"] < 1


def test_generate_benchmark_prints_one_json_line_of_figures():
    figures = run_quick("generate.py")
    assert figures["bench"] == "generate" and figures["images"] == 16
    for key in (
        "bare_images_per_s",
        "curate_images_per_s",
        "render_images_per_s",
        "png_images_per_s",
        "fid_generated_images_per_s",
        "fid_reals_images_per_s",
    ):
        assert figures[key] > 0, key
    assert figures["curate_share_of_bare"] > 0 and figures["target_share"] == 0.9


def test_serve_benchmark_answers_every_request_and_prints_one_json_line():
    figures = run_quick("serve.py")
    assert figures["bench"] == "serve" and figures["requests"] == 24 and figures["clients"] == 6
    assert figures["answered"] == 24 and figures["failed"] == 0 and figures["unanswered"] == 0
    assert figures["history_entries"] == 24  # each request kept its entry in RUN/playground
    assert 0 < figures["p50_ms"] <= figures["p95_ms"] and figures["requests_per_s"] > 0
    assert figures["baseline_images_per_s"] > 0 and figures["share_of_baseline"] > 0


def test_review_benchmark_prints_one_json_line_of_figures():
    figures = run_quick("review.py")
    assert figures["bench"] == "review" and figures["faces"] > 50 and figures["bad"] > 50
    assert set(figures["arms"]) == {
        "vote/queue", "vote/random", "learned/queue", "learned/random", "finetuned/queue"
    }  # fmt: skip
    for name, rounds in figures["arms"].items():
        assert [r["answers"] for r in rounds] == [20, 40, 60], name  # seeds, then two rounds of 20
        assert all(r["method"] == name.split("/")[0] for r in rounds), name
        for r in rounds:
            assert 0 < r["precision"] <= 1 and 0 < r["recall"] <= 1 and r["kept"] > 0, (name, r)
            assert r["best_precision_at_recall"] is None or 0 < r["best_precision_at_recall"] <= 1
    for score in ("vote", "learned"):  # the same seeds, the same first filter, whichever way it goes on
        assert figures["arms"][f"{score}/queue"][0] == {
            **figures["arms"][f"{score}/random"][0],
            "filter_s": ANY,
        }
    assert set(figures["target_reached"]) == set(figures["arms"])
