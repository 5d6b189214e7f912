"""The loop's outcome as the run's own generate, filter and train outputs, so that the run's evaluate stage scores
the loop's student on the test split and its document stage writes the cards over every row the rounds made.

generate/ and filter/ hold the rows of rounds 1..final, in round order (each row's provenance says its round and why
its seed was chosen); train/adapter/ is the final round's adapter, whose training_data.json names the adapter it
continued, and so on back to round 1 (or, retrained, every round's rows file): evaluation's leak check reads the rows
of every round. Each marker's summary
says which rounds it was assembled from.
"""

from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq

from distill.filters.report import funnel, write_funnel
from distill import rows as C
from distill.loop.layout import LoopDir
from distill.recipe import Recipe
from distill.run_dir import RunDir, atomic_path, write_json
from distill.stages import fingerprint

SPLIT_FILES = ("seeds.jsonl", "heldout.jsonl", "dev.jsonl")


def answer_tokens(rows_file) -> int:
    """The tokens the teacher wrote for a generated rows file, as each row's provenance counts them."""
    provenance = pq.read_table(rows_file, columns=[C.PROVENANCE]).column(C.PROVENANCE).to_pylist()
    return sum(p.get("completion_tokens") or 0 for p in provenance)


def _concat(paths) -> pa.Table:
    """Tables of the rounds, one after another; a provenance field one round has and another lacks is null there."""
    return pa.concat_tables([pq.read_table(p) for p in paths], promote_options="permissive")


def _write(table: pa.Table, path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table.replace_schema_metadata(None), tmp)


def assemble(recipe: Recipe, run: RunDir, layout: LoopDir, final: int) -> None:
    rounds = [layout.round(k) for k in range(1, final + 1)]
    made_from = {r.root.name: {s: r.read_marker(s)["output_hash"] for s in ("select", "generate", "filter", "train")}
                 for r in rounds}
    marker = run.read_marker("train")
    if marker and marker["summary"].get("assembled_from") == made_from and all(
            run.is_complete(s, fingerprint(recipe, run, s)) for s in ("generate", "filter", "train")):
        return  # the same rounds, already assembled
    for stage in ("generate", "filter", "train"):
        run.clear_marker(stage)
        shutil.rmtree(run.stage(stage), ignore_errors=True)

    # generate: the splits (the same in every round) and every round's rows
    run.stage("generate").mkdir(parents=True)
    for name in SPLIT_FILES:
        shutil.copyfile(rounds[0].stage("generate") / name, run.stage("generate") / name)
    _write(_concat(r.generated for r in rounds), run.generated)
    captures = [r.teacher_logprobs for r in rounds if r.teacher_logprobs.is_file()]
    if captures:
        _write(_concat(captures), run.teacher_logprobs)
    g = [r.read_marker("generate")["summary"] for r in rounds]
    tokens = answer_tokens(run.generated)
    written = sum(r.read_marker("select")["summary"].get("written", 0) for r in rounds)
    teacher_did = g[0].get("teacher_did")
    if written and teacher_did:  # the cards' first sentence: not every input was real
        teacher_did += f", and {written} inputs it wrote itself from the student's dev errors (loop.errors.synthesize)"
    run.mark_complete("generate", fingerprint(recipe, run, "generate"), {
        "mode": g[0]["mode"], "teacher_did": teacher_did, "prompts": sum(s["prompts"] for s in g),
        "rows": sum(s.get("rows", 0) for s in g), "failures": sum(s.get("failures", 0) for s in g),
        "new_tokens": tokens, "seconds": round(sum(s.get("seconds", 0) for s in g), 1),
        "assembled_from": list(made_from)})

    # filter: every round's flagged rows, and one funnel over them
    table = _concat(r.filtered for r in rounds)
    _write(table, run.filtered)
    f = [r.read_marker("filter")["summary"] for r in rounds]
    labels = list(dict.fromkeys(step["filter"] for s in f for step in s["funnel"]))
    kept = sum(table.column(C.KEPT).to_pylist())
    steps = funnel(table, labels)
    write_funnel(run.stage("filter"), steps, table.num_rows, kept)
    _merge_contamination(rounds, run)
    run.mark_complete("filter", fingerprint(recipe, run, "filter"), {
        "rows": table.num_rows, "kept": kept, "rejected": table.num_rows - kept, "funnel": steps,
        "seconds": round(sum(s.get("seconds", 0) for s in f), 1), "assembled_from": list(made_from)})

    # train: the final round's adapter (its record names the rounds' adapters it continued)
    shutil.copytree(rounds[-1].adapter, run.adapter)
    for name in ("log.json", "loss.png"):
        if (rounds[-1].stage("train") / name).is_file():
            shutil.copyfile(rounds[-1].stage("train") / name, run.stage("train") / name)
    t = [r.read_marker("train")["summary"] for r in rounds]
    # continued: the student made every round's steps; retrained: the final round's training alone made it
    trained = t if recipe.loop.train == "continue" else t[-1:]
    summary = {**t[-1], "rows": sum(s.get("rows") or 0 for s in trained),
               "steps": sum(s.get("steps") or 0 for s in trained),
               "seconds": round(sum(s.get("seconds", 0) for s in t), 1), "rounds": len(t),
               "assembled_from": made_from}
    run.mark_complete("train", fingerprint(recipe, run, "train"), summary)


def _merge_contamination(rounds: list[RunDir], run: RunDir) -> None:
    """The decontaminate filter's records of each round, as one run's: items per set, and the leaks found."""
    items: dict[str, list] = {}
    leaks: list[str] = []
    for r in rounds:
        found = r.stage("filter") / "contaminated_items.json"
        if found.is_file():
            for name, ids in json.loads(found.read_text()).items():
                items[name] = sorted(set(items.get(name, [])) | set(ids))
        log = r.stage("filter") / "contamination.jsonl"
        if log.is_file():
            leaks += [line for line in log.read_text().splitlines() if line.strip()]
    if items:
        write_json(run.stage("filter") / "contaminated_items.json", items)
    if leaks:
        with atomic_path(run.stage("filter") / "contamination.jsonl") as tmp:
            tmp.write_text("\n".join(leaks) + "\n")
