"""What shapes each stage's output, as its fingerprint counts it: one function per stage, named by the stage registry
(distill.stages).

Settings count by value and every field of a section counts unless excluded here as cosmetic, so a new recipe field
redoes its stage until someone decides otherwise. Files count by content, never by path: the same bytes moved
elsewhere change nothing. Models count by content and the settings they run with (model_fingerprint).
"""

from __future__ import annotations

from pathlib import Path

from distill.catalog import unused_sections
from distill.data.sources import content_hash, data_sources, identity
from distill.models.context import resolved_model
from distill.models.identity import folder_hash
from distill.models.merge import adapter_serving
from distill.recipe import Recipe
from distill.train.repair import repaired_guard_sets


def _file(path: str) -> dict:
    """A data file by content, with its suffix: `format: auto` reads the format from it."""
    return {"sha256": content_hash(path), "suffix": Path(path).suffix.lower()}


def _data(r: Recipe) -> dict:
    d = {**r.data.model_dump(mode="json", exclude={"path", "answer_only"}), "file": identity(r.data)}
    if r.data.answer_only:  # a loop round's selection, by content
        d["answer_only"] = content_hash(r.data.answer_only)
    return d


# What decontamination reads of an eval set: its items (evaluate reads the rest: metrics, tolerances, prompts).
DECONTAMINATION_FIELDS = {"name", "data", "path", "hub", "config", "split", "revision", "format", "input_field",
                          "target_field", "limit"}


def _eval_set(s, fields: set[str] | None = None) -> dict:
    out = s.model_dump(mode="json", include=fields)
    if s.data is None:
        out["path"] = identity(s)
    return out


def generate_settings(r: Recipe) -> dict:
    # chunk_size: how many prompts are written at once; rows are made per item, with per-item seeds
    g = r.generate.model_dump(mode="json", exclude={"chunk_size"})
    if g.get("endpoint"):  # the server and the model it serves count; how requests travel does not
        g["endpoint"] = {k: v for k, v in g["endpoint"].items() if k in ("url", "model")}
    return {"data": _data(r), "generate": g, **({"loop_dev": r.loop.dev.model_dump()} if r.loop else {})}


def filter_settings(r: Recipe) -> dict:
    f = r.filter.model_dump(mode="json", exclude={"num_proc"})  # processes for per-row checks: the same rows either way
    for step in f["steps"]:
        if step["type"] == "verifier":
            target, _, name = step["function"].rpartition(":")
            if target.endswith(".py"):
                step["function"] = {"file": content_hash(target), "name": name}
        if step.get("embedder") and Path(step["embedder"]).is_dir():
            step["embedder"] = folder_hash(Path(step["embedder"]))
    if f["calibration"]["gold"]:
        f["calibration"]["gold"] = _file(f["calibration"]["gold"])
    settings = {"filter": f}
    if any(step.type == "decontaminate" for step in r.filter.steps):  # the held-out split comes in as generate's output
        settings["eval_sets"] = [_eval_set(s, DECONTAMINATION_FIELDS) for s in r.evaluate.sets]
    return settings


# Thresholds that refuse a training run, never shape the adapter one makes.
TRAIN_REFUSAL_THRESHOLDS = {"max_truncated_share": True, "kd": {"max_mismatch_share"}}


def train_settings(r: Recipe) -> dict:
    # logging_steps and report_to only say how often and where the loss is logged: the same adapter and
    # checkpoints. save_steps counts: it decides which checkpoints are written (and evaluated with
    # evaluate.checkpoints). The name is written into the adapter's training_data.json. The number of processes is a
    # fact of the launch (distill.stages: Stage.launch), not of the recipe. Which guard sets repair is like only marks
    # them in the report.
    # license only goes on the card; a full fine-tune has no adapter settings
    # add_rows: by content below, and absent when empty, as before the setting existed
    exclude = {"logging_steps": True, "report_to": True, "license": True, "add_rows": True, **TRAIN_REFUSAL_THRESHOLDS,
               **{section: True for section in unused_sections(r.train.objective)},  # an objective not run
               **({"lora": True} if not r.train.trains_adapter else {})}
    if r.train.uses("on_policy") and r.train.on_policy.repair:
        exclude["on_policy"] = {"repair": {"guard_sets"}}
    settings = {"train": r.train.model_dump(mode="json", exclude=exclude), "name": r.name}
    if r.train.init_adapter:  # the adapter continued, by content
        settings["train"]["init_adapter"] = content_hash(r.train.init_adapter)
    if r.train.add_rows:  # other runs' rows, by content
        settings["train"]["add_rows"] = [content_hash(p) for p in r.train.add_rows]
    if r.train.uses("on_policy"):
        o = r.train.on_policy
        settings["sampler_stop"] = list(r.evaluate.stop)  # the student's samples end at these strings, as its answers do
        if o.start_from not in ("base", "sft"):
            settings["start_adapter"] = content_hash(o.start_from)
        if r.generate.endpoint:  # the teacher scores on that server: which one counts, as for generation
            settings["teacher_endpoint"] = {k: getattr(r.generate.endpoint, k) for k in ("url", "model")}
        if o.repair:  # its prompts by content, less the evaluation sets' items; an earlier adapter as teacher by content
            settings["repair"] = {"prompts": identity(o.repair),
                                  "left_out": [_eval_set(s, DECONTAMINATION_FIELDS) for s in r.evaluate.sets],
                                  "teacher": content_hash(o.repair.teacher) if o.repair.teacher != "base" else "base"}
    return settings


def evaluate_settings(r: Recipe) -> dict:
    e = r.evaluate.model_dump(mode="json", exclude={"cache"})  # where results are reused from: the same scores
    e["sets"] = [_eval_set(s) for s in r.evaluate.sets]
    e["serve_adapters"] = adapter_serving(r.evaluate.serve_adapters)  # `auto` as resolved on this machine
    return {"evaluate": e, "seed": r.seed, "name": r.name, "repaired_guard_sets": repaired_guard_sets(r),
            "student_format": {"prompt_template": r.train.prompt_template, "completion_template": r.train.completion_template,
                               "chat": r.train.chat},
            "teacher_prompt": {"template": r.generate.answering_template(), "few_shot": r.generate.few_shot.model_dump(),
                               "chat": r.generate.chat, "system_prompt": r.generate.system_prompt}}


def _input_paths(r: Recipe) -> list[str]:
    paths = [step.function.rpartition(":")[0] for step in r.filter.steps if step.type == "verifier"]
    return paths + ([r.filter.calibration.gold] if r.filter.calibration.gold else [])


def document_settings(r: Recipe) -> dict:
    # The manifest and cards record the whole recipe, the input files by path and content and the models'
    # full identities (paths included): any change to what they record redoes the stage.
    return {"recipe": r.model_dump(mode="json"),
            "inputs": {**data_sources(r),
                       **{p: content_hash(p) for p in sorted(set(_input_paths(r))) if Path(p).exists()}},
            "identities": {role: resolved_model(r, role)[1] for role in all_roles(r)}}


def trained_roles(r: Recipe) -> tuple[str, ...]:
    """The student, and the teacher when training asks it (on-policy scoring)."""
    return ("student",) + (("teacher",) if r.train.runs_the_teacher else ())


def judge_roles(r: Recipe) -> tuple[str, ...]:
    return tuple(sorted({step.model for step in r.filter.steps if step.type == "judge"}))


def evaluated_roles(r: Recipe) -> tuple[str, ...]:
    return (("student",) if {"base", "student"} & set(r.evaluate.models) else ()) + (("teacher",) if "teacher" in r.evaluate.models else ())


def all_roles(r: Recipe) -> tuple[str, ...]:
    return r.models.roles
