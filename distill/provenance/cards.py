"""Dataset and model cards: Markdown with the YAML header of Hugging Face cards, readable on their own.

The templates live beside this module and are rendered in Jinja's sandbox; the YAML header is built as data, through
huggingface_hub's card classes (ModelCardData / DatasetCardData), never templated, so it always parses as the Hub
reads it.
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


def size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "n>1M"


def render_card(template: str, header: dict, context: dict, kind: str = "model") -> str:
    """The template's body under `header`, as huggingface_hub's ModelCard (or DatasetCard) writes it."""
    from huggingface_hub import DatasetCard, DatasetCardData, ModelCard, ModelCardData

    card_class, data_class = (DatasetCard, DatasetCardData) if kind == "dataset" else (ModelCard, ModelCardData)
    body = _env().get_template(template).render(**context)
    return str(card_class(f"---\n{data_class(**header).to_yaml()}\n---\n\n{body.strip()}\n"))


UNKNOWN_LICENSE = "unknown"  # a Hub license id: the card says so plainly rather than guess


def model_license(folder: str | Path | None) -> dict | None:
    """The license a model's own files state: its card's header (README.md `license`, with `license_name` and
    `license_link` for `other`), else config.json's `license`. None when they state none."""
    if not folder or not Path(folder).is_dir():
        return None
    folder = Path(folder)
    card = folder / "README.md"
    if card.is_file():
        text = card.read_text(errors="replace")
        header = {}
        if text.startswith("---"):
            try:
                header = yaml.safe_load(text[3:].split("\n---", 1)[0]) or {}
            except yaml.YAMLError:
                header = {}
        if isinstance(header, dict) and header.get("license"):
            return {"license": header["license"], "source": "README.md",
                    **{k: header[k] for k in ("license_name", "license_link") if header.get(k)}}
    config = folder / "config.json"
    if config.is_file():
        import json

        try:
            value = json.loads(config.read_text()).get("license")
        except (ValueError, AttributeError):
            value = None
        if value:
            return {"license": value, "source": "config.json"}
    return None


def student_license(identity: dict, recipe_license: str | None) -> dict:
    """The trained student's license: the base model's own (a derivative carries its base's terms), else the recipe's
    train.license, else unknown, each with where it came from."""
    found = model_license(identity.get("path"))
    if found:
        return {**found, "source": f"read from the base model's {found['source']}"}
    if recipe_license:
        return {"license": recipe_license, "source": "the recipe's train.license; the base model's files state none"}
    return {"license": UNKNOWN_LICENSE,
            "source": "the base model's files state none and the recipe sets no train.license"}


def data_license(identity: dict) -> dict:
    """The dataset's license: the teacher's own, whose terms may bind what it wrote; else unknown."""
    found = model_license(identity.get("path"))
    if found:
        return {**found, "source": f"read from the teacher's {found['source']}"}
    return {"license": UNKNOWN_LICENSE, "source": "the teacher's files state none"}


def _license_header(found: dict) -> dict:
    return {k: found[k] for k in ("license", "license_name", "license_link") if k in found}


def hub_datasets(ctx: dict) -> list[str]:
    """The Hub dataset the run's real data came from (the card's `datasets`), if it came from one."""
    hub = (ctx.get("data") or {}).get("hub")
    return [hub] if hub else []


def student_kind(train: dict, export: dict | None = None) -> str:
    """What the card is about: `adapter` (lora, qlora), `merged` (an adapter merged into its base by export) or
    `full` (every weight trained: a whole model). Cards of runs documented before train.method read as lora."""
    if train.get("method") == "full":
        return "full"
    return "merged" if export and export.get("merged") else "adapter"


def method_tags(train: dict, kind: str) -> list[str]:
    method = train.get("method", "lora")
    return ["distill", "distillation"] + (["full-fine-tune"] if method == "full" else [method]) + (
        ["merged"] if kind == "merged" else [])


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
    found = data_license(ctx["models"].get("teacher") or {})
    header = {
        "pretty_name": f"{ctx['name']}: synthetic training data",
        **_license_header(found),
        "tags": ["synthetic", "distillation", "distill"],
        "task_categories": ["text-generation"],
        "size_categories": [size_category(ctx["funnel"]["kept"] if ctx["funnel"] else 0)],
        "configs": [{"config_name": "default",
                     "data_files": [{"split": s, "path": DATA_SPLITS[s]} for s in splits]}],
    }
    if hub_datasets(ctx):
        header["source_datasets"] = hub_datasets(ctx)
    return render_card("dataset_card.md.j2", header, {**ctx, "data_splits": {s: DATA_SPLITS[s] for s in splits},
                                                      "license": found}, kind="dataset")


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
    kind = student_kind(ctx["train"], export)
    found = student_license(ctx["models"]["student"], ctx["train"].get("license"))
    header = {}
    base = hub_base_model(ctx["models"]["student"])
    if base:
        header["base_model"] = base
    if export:
        header["base_model_relation"] = "adapter" if kind == "adapter" else "finetune"
    header.update({
        **_license_header(found),
        "library_name": "peft" if kind == "adapter" else "transformers",
        "pipeline_tag": "text-generation",
        "tags": method_tags(ctx["train"], kind),
    })
    if hub_datasets(ctx):
        header["datasets"] = hub_datasets(ctx)
    if results:
        header["model-index"] = [{"name": f"{ctx['name']}-student", "results": results}]
    return render_card("model_card.md.j2", header, {**ctx, "export": export, "base_hub_id": base, "kind": kind,
                                                    "license": found, "trainer_args": trainer_args_text(ctx["train"]),
                                                    "guard_note": guard_note(ctx["eval_tables"])})


def trainer_args_text(train: dict) -> str:
    """train.trainer_args as the card lists them: `key=value`, in the recipe's order."""
    import json

    args = train.get("trainer_args") or {}
    return ", ".join(f"`{k}={json.dumps(v)}`" for k, v in args.items()) or "none"


def export_card(name: str, base: str | None, export: dict, terms: dict) -> str:
    """The card of an adapter (or a full run's model) exported on its own, without a documented run's evaluation to
    carry. `terms`: its license, see student_license."""
    kind = "full" if export.get("method") == "full" else ("merged" if export["merged"] else "adapter")
    header = {**({"base_model": base, "base_model_relation": "adapter" if kind == "adapter" else "finetune"}
                 if base else {}),
              **_license_header(terms),
              "library_name": "peft" if kind == "adapter" else "transformers", "pipeline_tag": "text-generation",
              "tags": method_tags({"method": export.get("method", "lora")}, kind)}
    return render_card("export_card.md.j2", header, {"name": name, "export": export, "kind": kind, "license": terms,
                                                     "base_hub_id": base})
