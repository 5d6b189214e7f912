"""Items that leaked into the training data are reported apart: the score on the clean part sits beside the full score."""

from __future__ import annotations

from distill.evaluate.report import build_report, render_markdown
from distill.recipe import EvalSet, EvaluateSettings


def predictions(model: str, correct: set[int]) -> list[dict]:
    return [{"set": "plural", "model": model, "item_id": f"i{i}", "slice": None, "step": None,
             "scores": {"exact_match": float(i in correct)}} for i in range(10)]


def report(contaminated=None) -> dict:
    s = EvalSet(name="plural", data="heldout")
    settings = EvaluateSettings(sets=[s], models=["base", "student"])
    rows = predictions("base", set()) + predictions("student", {0, 1, 2, 3, 4})
    return build_report(rows, settings, "base", ["base", "student"], {"plural": s}, contaminated=contaminated)


def test_the_clean_part_leaves_out_the_leaked_items():
    # the student "knows" items 0-4, and items 0-3 were in its training data
    entry = report({"plural": ["i0", "i1", "i2", "i3", "not-an-eval-item"]})["sets"]["plural"]
    assert entry["models"]["student"]["score"] == 0.5
    assert entry["clean"] == {"n": 6, "contaminated": 4, "models": {"base": 0.0, "student": 1 / 6}}


def test_the_markdown_says_how_many_items_leaked():
    text = render_markdown(report({"plural": ["i0", "i1"]}))
    assert "2 item(s) leaked into the training data" in text and "on the 8 clean items: base 0.000, student 0.375" in text


def test_no_leaks_no_clean_section():
    assert "clean" not in report({"plural": []})["sets"]["plural"]
    assert "clean" not in report(None)["sets"]["plural"]
