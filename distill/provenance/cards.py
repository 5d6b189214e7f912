"""Dataset and model cards: Markdown with the YAML header of Hugging Face cards, readable on their own.

The templates live beside this module and are rendered in Jinja's sandbox; the YAML header
is built as data and dumped, never templated, so it always parses.
"""

from __future__ import annotations

import re
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


# Hub ids of the models `packaged:` ships (converted from a GGUF file, so not the hub's own weights; the id names
# the model they were made from).
PACKAGED_HUB_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")


def is_hub_id(name: str | None) -> bool:
    """`owner/name` as the hub spells repository ids (not a local path that happens to have one slash)."""
    return bool(name) and bool(_HUB_ID.match(name)) and ".." not in name and "--" not in name and not Path(name).exists()


def hub_base_model(identity: dict) -> str | None:
    """The hub id of a model by its identity (distill.models.identity): the `hub:` id, the id a `packaged:` model was
    made from, or for a local folder a hub id its own files record (`_name_or_path`, `base_model`); else None."""
    name = identity.get("name") or ""
    if name.startswith("packaged:"):
        return PACKAGED_HUB_IDS.get(name.split(":", 1)[1])
    if name != identity.get("path") and is_hub_id(name):  # `hub:` models: the name is the id, the path a snapshot
        return name
    recorded = identity.get("recorded_names") or {}
    return next((n for n in recorded.get("name_or_path", []) + recorded.get("base_model", []) if is_hub_id(n)), None)


# The dataset card's splits, as files the document stage writes beside it (paths relative to the run root): the
# kept rows are what the student trained on; the rejected rows, with their reasons, are a split of their own.
DATA_SPLITS = {"train": "document/data/train.parquet", "rejected": "document/data/rejected.parquet"}


def dataset_card(ctx: dict, splits: tuple[str, ...] = ("train", "rejected")) -> str:
    """ctx: see `distill.provenance.stage.card_context`; `splits`: the split files written (see DATA_SPLITS)."""
    header = {
        "pretty_name": f"{ctx['name']}: synthetic training data",
        "tags": ["synthetic", "distillation", "distill"],
        "task_categories": ["text-generation"],
        "size_categories": [size_category(ctx["funnel"]["kept"] if ctx["funnel"] else 0)],
        "configs": [{"config_name": "default",
                     "data_files": [{"split": s, "path": DATA_SPLITS[s]} for s in splits]}],
    }
    return render_card("dataset_card.md.j2", header, {**ctx, "data_splits": {s: DATA_SPLITS[s] for s in splits}})


def guard_note(tables: list[dict]) -> str:
    """What the evaluated guard sets measure in this run: general ability beside the task, except those on-policy repair
    trained toward (read from the tables, so a card context saved before they were marked reads as it did)."""
    guards = [t["name"] for t in tables if t["guard"]]
    repaired = [t["name"] for t in tables if t["guard"] and t.get("repaired")]
    measuring = [name for name in guards if name not in repaired]
    names = lambda xs: ", ".join(f"`{x}`" for x in xs)
    out = []
    if measuring:
        out.append(f"The guard set{'s' if len(measuring) > 1 else ''} {names(measuring)} "
                   f"measure{'' if len(measuring) > 1 else 's'} general ability beside the task, so that forgetting "
                   "shows up.")
    if repaired:
        one = len(repaired) == 1
        out.append(f"The guard set{'' if one else 's'} {names(repaired)} {'is' if one else 'are'} repaired: on-policy "
                   f"repair trained the student toward an earlier model on prompts like {'its' if one else 'their'} "
                   f"items, so {'it does' if one else 'they do'} not measure general ability"
                   + ("." if measuring else "; no guard set measures it in this run."))
    return " ".join(out)


def model_card(ctx: dict, export: dict | None = None) -> str:
    """The student's card: for the run's adapter, or (`export`, see distill.export) for an exported adapter or
    merged model, whose header names the library that loads it."""
    results = []
    for table in ctx["eval_tables"]:
        student = next((r for r in table["models"] if r["model"] == "student" and r["score"] is not None), None)
        if student:
            kind = "held-out real data"
            if table["guard"]:
                kind = "repaired guard set, real data" if table.get("repaired") else "guard set, real data"
            # The hub reads dataset.type as a dataset id: the set's name; the description goes in dataset.name.
            metrics = [{"type": table["metric"], "name": table["metric"], "value": round(student["score"], 4)}]
            clean = (table.get("clean") or {}).get("models", {}).get("student")
            if clean is not None:  # items reached training: the value on the others beside the headline
                metrics.append({"type": table["metric"], "value": round(clean, 4),
                                "name": f"{table['metric']} on the {table['clean']['n']} items not in the training rows"})
            results.append({"task": {"type": "text-generation", "name": "Text Generation"},
                            "dataset": {"name": f"{table['name']} ({kind})", "type": table["name"]},
                            "metrics": metrics})
    merged = bool(export and export.get("merged"))
    header = {}
    base = hub_base_model(ctx["models"]["student"])
    if base:
        header["base_model"] = base
    if export:
        header["base_model_relation"] = "finetune" if merged else "adapter"
    header.update({
        "library_name": "transformers" if merged else "peft",
        "pipeline_tag": "text-generation",
        "tags": ["distill", "lora", "distillation"] + (["merged"] if merged else []),
    })
    if results:
        header["model-index"] = [{"name": f"{ctx['name']}-student", "results": results}]
    return render_card("model_card.md.j2", header, {**ctx, "export": export, "base_hub_id": base,
                                                    "guard_note": guard_note(ctx["eval_tables"])})


def export_card(name: str, base: str | None, export: dict) -> str:
    """The card of an adapter exported on its own, without a documented run's evaluation to carry."""
    merged = export["merged"]
    header = {**({"base_model": base, "base_model_relation": "finetune" if merged else "adapter"} if base else {}),
              "library_name": "transformers" if merged else "peft", "pipeline_tag": "text-generation",
              "tags": ["distill", "lora", "distillation"] + (["merged"] if merged else [])}
    return render_card("export_card.md.j2", header, {"name": name, "export": export})
