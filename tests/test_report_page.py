"""What a reader of report.html and report.png finds: the items where the models disagree, filterable by slice and
by "student wrong, teacher right", and a chart of the metric that moved on each set.

The report is built from scorer rows in the quickstart's shape: a task set with a rare slice, and a guard set on
which every model's exact match is 0 while the student's reference NLL jumps."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from distill.evaluate.answers import disagreements
from distill.evaluate.chart import panels, plot_differences
from distill.evaluate.html import render_html
from distill.evaluate.report import build_report
from distill.recipe import EvalSet, EvaluateSettings

SETS = {"plural": EvalSet(name="plural", data="heldout"),
        "arithmetic": EvalSet(name="arithmetic", data="heldout", guard=True, metrics=["exact_match", "nll"])}


def _rows(model, set_name, i, answer, reference, scores, slice_=None):
    return {"set": set_name, "model": model, "item_id": f"{set_name}-{i}", "step": None, "input": f"input {i}",
            "reference": reference, "references": [reference], "slice": slice_, "prompt": f"{model} prompt {i}",
            "prediction": answer, "finish_reason": "stop", "score": next(iter(scores.values())), "scores": scores}


def quickstart_like() -> list[dict]:
    """plural: 60 items, 50 regular and 10 irregular; the base is always wrong, the teacher right on all but item 0,
    the student right on the regular ones and wrong on the first 4 irregular ones. arithmetic: no model ever right;
    the student's NLL 5 nats above the base's."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(60):
        irregular = i >= 50
        ref = f"word{i}s"
        answers = {"base": "", "teacher": ref if i != 0 else "wrong", "student": "wrongs" if irregular and i < 54 else ref}
        for model, answer in answers.items():
            rows.append(_rows(model, "plural", i, answer, ref, {"exact_match": float(answer == ref)},
                              "irregular" if irregular else "regular"))
    for i in range(40):
        nll = float(rng.normal(2.4, 0.5))
        for model, shift in (("base", 0.0), ("teacher", 0.0), ("student", 5.0)):
            rows.append(_rows(model, "arithmetic", i, "7", "12", {"exact_match": 0.0, "nll": nll + shift}))
    return rows


@pytest.fixture(scope="module")
def report_and_rows():
    rows = quickstart_like()
    settings = EvaluateSettings(sets=list(SETS.values()), bootstrap_samples=200)
    return build_report(rows, settings, "base", ["base", "student", "teacher"], SETS), rows


def test_the_page_lists_the_items_where_the_models_disagree_and_only_those(report_and_rows):
    report, rows = report_and_rows
    found = disagreements(rows, report)
    plural = found["plural"]
    assert plural["n_items"] == 60 and plural["total"] == 60  # the base is wrong everywhere, the others right somewhere
    assert plural["models"] == ["base", "student", "teacher"] and plural["slices"] == ["irregular", "regular"]
    # student wrong, teacher right: the 4 irregular items the student missed, not item 0 (the teacher missed it)
    assert sorted(r["item_id"] for r in plural["rows"] if r["worse"]) == [f"plural-{i}" for i in range(50, 54)]
    assert plural["worse"] == 4
    first = plural["rows"][0]
    assert [(a["model"], a["text"], a["right"]) for a in first["answers"]] == [
        ("base", "", False), ("student", "word0s", True), ("teacher", "wrong", False)]
    # arithmetic: every model wrote "7" and scored 0 on every item: nothing to show there
    assert found["arithmetic"]["total"] == 0


def test_a_long_list_is_cut_and_says_so(report_and_rows):
    report, rows = report_and_rows
    html = render_html(report, [], "t", rows)
    assert "Where the models disagree: 60 of 60 items" in html
    assert disagreements(rows, report, max_rows=10)["plural"]["total"] == 60
    assert len(disagreements(rows, report, max_rows=10)["plural"]["rows"]) == 10


def test_each_set_is_charted_on_the_metric_that_moved(report_and_rows):
    report, _ = report_and_rows
    # arithmetic's exact match is 0 for every model: its panel shows the NLL jump instead
    assert sorted(panels(report)) == [("arithmetic", "nll"), ("plural", "exact_match")]


def test_answer_text_reaches_the_page_escaped(report_and_rows):
    report, rows = report_and_rows
    rows = [dict(r, prediction="<script>alert(1)</script>") if r["model"] == "student" and r["item_id"] == "plural-1" else r
            for r in rows]
    html = render_html(report, [], "t", rows)
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def _chromium() -> str:
    """Chromium from Debian's packages, installed when missing (scripts/browser.sh)."""
    out = subprocess.run(["bash", str(ROOT / "scripts" / "browser.sh")], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


def _shown_rows(browser: str, page: Path, fragment: str, section: str) -> list[str]:
    """The answer rows of `section` that a real browser shows after the page's script ran with `fragment`."""
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          f"{page.as_uri()}#{fragment}"], capture_output=True, text=True, timeout=120).stdout
    part = dom[dom.index(f'data-set="{section}"'):]
    part = part[:part.index("</section>")]
    return re.findall(r'<tr data-slice="(\w*)" data-worse="(\d)"(?! hidden)[^>]*>', part)


@pytest.mark.slow
def test_in_a_real_browser_the_filters_show_what_they_name(report_and_rows, tmp_path):
    browser = _chromium()
    report, rows = report_and_rows
    plot_differences(report, tmp_path / "report.png")
    page = tmp_path / "report.html"
    page.write_text(render_html(report, [tmp_path / "report.png"], "quickstart-like", rows))
    assert len(_shown_rows(browser, page, "", "plural")) == 60
    assert _shown_rows(browser, page, "slice=irregular", "plural") == [("irregular", w) for w in "1111000000"]
    assert _shown_rows(browser, page, "worse=1", "plural") == [("irregular", "1")] * 4
    assert _shown_rows(browser, page, "slice=regular&worse=1", "plural") == []
    shot = tmp_path / "report-screenshot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1300,2400", f"{page.as_uri()}#slice=irregular&worse=1"], capture_output=True, timeout=120)
    assert shot.stat().st_size > 10_000  # the page rendered (the screenshot is left in the test's folder to look at)
