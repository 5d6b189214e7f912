"""Dataset and model cards: Markdown with the YAML header of Hugging Face cards, readable on their own.

The templates live beside this module and are rendered in Jinja's sandbox; the YAML header
is built as data and dumped, never templated, so it always parses.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from jinja2 import FileSystemLoader, StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

TEMPLATES = Path(__file__).parent / "templates"


def _num(x, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _signed(x) -> str:
    return "n/a" if x is None else f"{x:+.3f}"


def _short(sha: str | None) -> str:
    return "n/a" if not sha else sha[:12]


def _cell(text) -> str:
    """Text safe inside a Markdown table cell."""
    return "" if text is None else str(text).replace("|", "\\|").replace("\n", " ")


def _env() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(loader=FileSystemLoader(str(TEMPLATES)), undefined=StrictUndefined,
                                        keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True, autoescape=False)
    env.filters.update(num=_num, pct=_pct, signed=_signed, short=_short, cell=_cell)
    return env


def _front_matter(header: dict) -> str:
    return "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True, width=1000) + "---\n"


def size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "n>1M"


def render_card(template: str, header: dict, context: dict) -> str:
    body = _env().get_template(template).render(**context)
    return _front_matter(header) + "\n" + body.strip() + "\n"


def dataset_card(ctx: dict) -> str:
    """ctx: see `distill.provenance.stage.card_context`."""
    header = {
        "pretty_name": f"{ctx['name']}: synthetic training data",
        "tags": ["synthetic", "distillation", "distill"],
        "task_categories": ["text-generation"],
        "size_categories": [size_category(ctx["funnel"]["kept"] if ctx["funnel"] else 0)],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "filter/rows.parquet"}]}],
    }
    return render_card("dataset_card.md.j2", header, ctx)


def model_card(ctx: dict) -> str:
    results = []
    for table in ctx["eval_tables"]:
        student = next((r for r in table["models"] if r["model"] == "student" and r["score"] is not None), None)
        if student:
            kind = "guard set (real data)" if table["guard"] else "held-out real data"
            results.append({"task": {"type": "text-generation"}, "dataset": {"name": table["name"], "type": kind},
                            "metrics": [{"type": table["metric"], "value": round(student["score"], 4)}]})
    header = {
        "base_model": ctx["models"]["student"]["name"],
        "library_name": "peft",
        "tags": ["distill", "lora", "distillation"],
        "model-index": [{"name": f"{ctx['name']}-student", "results": results}],
    }
    return render_card("model_card.md.j2", header, ctx)
