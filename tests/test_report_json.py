"""Is report.json strict JSON, which any parser reads, even when a figure has no items behind it?"""

from __future__ import annotations

import json

from distill.evaluate.outputs import write_outputs
from distill.evaluate.report import build_report
from distill.recipe import EvalSet, EvaluateSettings
from distill.run_dir import write_json


def strict(text: str):
    """json.loads that refuses NaN and Infinity, as JavaScript's JSON.parse and most other parsers do."""
    return json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))


def test_an_evaluation_whose_clean_part_is_empty_writes_strict_json(tmp_path):
    # every item of the set reached training: the score on the clean items is a mean of nothing
    s = EvalSet(name="plural", data="heldout")
    settings = EvaluateSettings(sets=[s], models=["base", "student"], bootstrap_samples=200)
    rows = [{"set": "plural", "model": m, "item_id": f"i{i}", "slice": "regular", "step": None, "input": f"w{i}",
             "scores": {"exact_match": float(m == "student")}} for m in ("base", "student") for i in range(6)]
    report = build_report(rows, settings, "base", ["base", "student"], {"plural": s},
                          contaminated={"plural": [f"i{i}" for i in range(6)]})
    assert report["sets"]["plural"]["clean"]["n"] == 0
    write_outputs(tmp_path, report, rows, "strict")
    parsed = strict((tmp_path / "report.json").read_text())
    assert parsed["sets"]["plural"]["clean"]["models"] == {"base": None, "student": None}
    assert parsed["sets"]["plural"]["models"]["student"]["score"] == 1.0


def test_non_finite_numbers_become_null_anywhere_in_a_written_file(tmp_path):
    import numpy as np

    write_json(tmp_path / "x.json", {"nan": float("nan"), "inf": [np.float32("inf"), -float("inf")], "n": np.int64(3), "ok": 0.5})
    assert strict((tmp_path / "x.json").read_text()) == {"nan": None, "inf": [None, None], "n": 3, "ok": 0.5}
