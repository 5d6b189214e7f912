"""A loop round's first step: choose which unanswered seeds the teacher answers, and record why each was chosen.

Round 1 draws at random for every strategy: no student has been measured yet. Later rounds read the round before:
its adapter (uncertainty), its dev predictions (errors) or its dev scores per slice (slices). Nothing here reads the
held-out test split. The choice is written to loop/round-NN/select/selected.jsonl with a completion marker whose
fingerprint covers everything it read, so a resumed loop keeps it and the teacher answers no seed twice.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow.parquet as pq

from distill import rows as C
from distill.data.split import split_data, split_dev
from distill.errors import UserError
from distill.fingerprint import generate_settings
from distill.loop import strategies as S
from distill.loop.assemble import answer_tokens
from distill.loop.layout import DEV_SET, SELECT, LoopDir
from distill.models.context import model_fingerprint
from distill.progress import console
from distill.recipe import Recipe
from distill.prompts.template import row_seed
from distill.run_dir import RunDir, hash_json, read_jsonl, write_jsonl


def strategy_of(recipe: Recipe, k: int) -> str:
    """The strategy round k uses: the recipe's, except in round 1."""
    return recipe.loop.strategy if k > 1 else "random"


def selection_fingerprint(recipe: Recipe, run: RunDir, k: int) -> str:
    """What round k's choice depends on: the pool (the data and its splits), how many prompts the round takes, the
    strategy and its settings, the choices before it and, for a strategy that reads it, what the round before
    measured. The round's own share of the budget, not the loop's total: a loop given more rounds or a larger budget
    after it stopped keeps its rounds and goes on from the last."""
    loop, layout = recipe.loop, LoopDir(run)
    strategy = strategy_of(recipe, k)
    inputs = {"round": k, "seed": recipe.seed, "strategy": strategy, "data": generate_settings(recipe)["data"],
              "prompts": round_size(recipe, layout, k)[2], "dev": loop.dev.model_dump(),
              "before": [layout.round(r).read_marker(SELECT)["output_hash"] for r in range(1, k)]}
    if strategy != "random":
        inputs["settings"] = getattr(loop, strategy).model_dump()
        if loop.explore:  # only when set: a loop that explores nothing keeps the choices it made before the setting
            inputs["explore"] = loop.explore
        if strategy == "errors" and loop.errors.synthesize:  # the teacher writes inputs, asked as generation asks
            inputs["writer"] = [model_fingerprint(recipe, "teacher", True), recipe.generate.chat]
        before = layout.round(k - 1)
        inputs["measured"] = {s: (before.read_marker(s) or {}).get("output_hash") for s in ("train", "evaluate")}
        if strategy == "uncertainty":
            inputs["student"] = model_fingerprint(recipe, "student", True)
            inputs["prompt"] = [recipe.train.prompt_template, recipe.train.chat, recipe.evaluate.max_tokens,
                                recipe.evaluate.stop]
        if strategy == "slices":
            inputs["teacher_on_dev"] = (layout.round(1).read_marker("evaluate") or {}).get("output_hash")
    return hash_json(inputs)


def pool_of(recipe: Recipe) -> tuple[list[dict], list[dict]]:
    """(the dev items, the seed pool), as every round's generate stage splits the data."""
    _, seeds = split_data(recipe)
    return split_dev(recipe, seeds)


def run_select(recipe: Recipe, run: RunDir, k: int, force: bool = False) -> dict:
    layout = LoopDir(run)
    here = layout.round(k)
    fp = selection_fingerprint(recipe, run, k)
    if not force and here.is_complete(SELECT, fp):
        return here.read_marker(SELECT)["summary"]
    started = time.time()
    _, pool = pool_of(recipe)
    answered, mean_tokens, n = round_size(recipe, layout, k)
    unanswered = [s for s in pool if s[C.ID] not in answered]
    strategy = strategy_of(recipe, k)
    explored = explore_size(recipe, strategy, n)
    targeted = n - explored
    writing = None
    if targeted and strategy == "errors" and recipe.loop.errors.synthesize:
        chosen, writing = written_round(recipe, run, layout, k, targeted, pool, unanswered)
    else:
        chosen = choose(recipe, layout, k, strategy, unanswered, targeted) if targeted and unanswered else []
    if explored:
        chosen += explore(recipe, k, unanswered, chosen, explored)
    here.clear_marker(SELECT)
    write_jsonl(layout.selection(k), [selection_entry(k, item, why) for item, why in chosen])
    taken = sum("written_from" not in why for _, why in chosen)  # a written input takes no seed from the pool
    summary = {"round": k, "strategy": strategy, "selected": len(chosen), "pool_left": len(unanswered) - taken,
               "answered_before": len(answered), "seconds": round(time.time() - started, 1),
               **({"explored": sum("explore" in why for _, why in chosen)} if explored else {}),
               **({"mean_teacher_tokens_before": round(mean_tokens, 1)} if mean_tokens else {})}
    if writing is not None:
        summary.update(written=len(writing.entries), written_dropped=dict(writing.dropped),
                       written_tokens=writing.tokens)
    here.mark_complete(SELECT, fp, summary)
    return summary


def explore_size(recipe: Recipe, strategy: str, n: int) -> int:
    """Of a round's n prompts, how many are drawn at random beside the strategy's choice (loop.explore)."""
    return 0 if strategy == "random" else round(n * recipe.loop.explore)


def explore(recipe: Recipe, k: int, unanswered: list[dict], chosen: S.Chosen, n: int) -> S.Chosen:
    """n unanswered seeds the strategy did not choose, drawn at random: the round's explored share."""
    taken = {item[C.ID] for item, why in chosen if "written_from" not in why}
    rest = [it for it in unanswered if it[C.ID] not in taken]
    drawn = S.pick_random(rest, n, row_seed(recipe.seed, f"loop round {k} explore"))
    return [(it, {**why, "explore": recipe.loop.explore}) for it, why in drawn]


def selection_entry(k: int, item: dict, why: dict) -> dict:
    """One line of selected.jsonl: a pool seed by its id, or an input the teacher wrote with its slice."""
    entry = {C.ID: item[C.ID], "why": {"round": k, **why}}
    if "written_from" in why:
        entry.update({C.INPUT: item[C.INPUT], C.SLICE: item[C.SLICE]})
    return entry


def written_round(recipe: Recipe, run: RunDir, layout: LoopDir, k: int, n: int, pool: list[dict],
                  unanswered: list[dict]):
    """(round k's chosen entries, what the writing made): n inputs the teacher writes from the dev errors of the
    round before (loop.errors.synthesize); with no dev error, n pool seeds at random, as `errors` does."""
    from distill.evaluate.metrics.normalize import normalize
    from distill.loop.written import write_inputs
    from distill.models.context import resolved_model
    from distill.models.teacher import teacher_engine

    errors = dev_errors(layout.round(k - 1), with_items=True)
    if not errors:
        return choose(recipe, layout, k, "errors", unanswered, n), None
    check_template_reads_input_only(recipe, pool)
    splits = [read_jsonl(layout.round(1).heldout), read_jsonl(layout.round(1).dev)]  # the test and dev items
    known = {normalize(str(x[C.INPUT]), ignore_case=True) for x in (*pool, *splits[0], *splits[1]) if x.get(C.INPUT)}
    known |= {normalize(e[C.INPUT], ignore_case=True) for r in range(1, k) for e in layout.chosen(r) if C.INPUT in e}
    teacher_dir, _ = resolved_model(recipe, "teacher")
    engine = teacher_engine(recipe, run, teacher_dir, stage="select", seed=recipe.generate.sampling.seed)
    try:
        writing = write_inputs(engine, recipe, k, errors, n, known)
    finally:
        engine.close()
    console(f"[select] round {k}: the teacher wrote {len(writing.entries)} inputs from {len(errors)} dev errors"
            + (f" ({', '.join(f'{c} {why}' for why, c in writing.dropped.items())}: dropped)" if writing.dropped else ""))
    return writing.entries, writing


def check_template_reads_input_only(recipe: Recipe, pool: list[dict]) -> None:
    """A written input has no source row: refuse, before the teacher writes anything, a generate.template that reads
    a column beside the input."""
    from distill.prompts.teacher import teacher_prompts
    from distill.prompts.template import PromptTemplate

    probe = {C.ID: "written", C.INPUT: "a written input", C.REFERENCE: None, C.SLICE: None, C.CELL: None}
    try:
        teacher_prompts(recipe, PromptTemplate(recipe.generate.template, "generate.template"), [probe], pool)
    except UserError as e:
        raise UserError(f"loop.errors.synthesize: an input the teacher writes has no other column, but {e}") from None


def round_size(recipe: Recipe, layout: LoopDir, k: int) -> tuple[set[str], float | None, int]:
    """(the seeds the rounds before round k chose, the teacher's tokens per prompt in those rounds where
    loop.budget.round_tokens reads them, the prompts round k takes): what the choice and its fingerprint agree on."""
    answered = layout.answered_before(k)
    mean_tokens = mean_teacher_tokens(layout, k) if recipe.loop.budget.round_tokens is not None else None
    return answered, mean_tokens, recipe.loop.round_budget(len(answered), mean_tokens)


def mean_teacher_tokens(layout: LoopDir, k: int) -> float | None:
    """The teacher's tokens per prompt in the rounds before round k (None in round 1): its answers, and the inputs it
    wrote for them (errors.synthesize, dropped writes included)."""
    rounds = [layout.round(r) for r in range(1, k)]
    for r, here in enumerate(rounds, 1):
        if not here.generated.is_file():
            raise UserError(f"loop round {r} has not been answered ({here.generated}): round {k}'s size follows its "
                            "answers (loop.budget.round_tokens), so its generation comes first")
    rows = sum(pq.read_metadata(r.generated).num_rows for r in rounds)
    written = sum(r.read_marker(SELECT)["summary"].get("written_tokens", 0) for r in rounds)
    return (sum(answer_tokens(r.generated) for r in rounds) + written) / rows if rows else None


def choose(recipe: Recipe, layout: LoopDir, k: int, strategy: str, items: list[dict], n: int) -> S.Chosen:
    seed = row_seed(recipe.seed, f"loop round {k}")
    loop = recipe.loop
    if strategy == "random":
        return S.pick_random(items, n, seed)
    before = layout.round(k - 1)
    if strategy == "uncertainty":
        u = loop.uncertainty
        scored = items if u.candidates is None else [it for it, _ in S.pick_random(items, u.candidates, seed)]
        uncertainty = student_uncertainty(recipe, scored, before.adapter, u)
        return S.pick_uncertain(scored, uncertainty, n, seed, u.measure)
    if strategy == "errors":
        errors = dev_errors(before)
        if not errors:
            console(f"[select] round {k}: the student answers every dev item right; drawing at random")
            return [(it, {**why, "fallback": "no dev errors"}) for it, why in S.pick_random(items, n, seed)]
        from distill.models.embeddings import embed

        vectors = embed([it[C.INPUT] for it in items] + [e[C.INPUT] for e in errors], loop.errors.embedder)
        return S.pick_near_errors(items, vectors[:len(items)], errors, vectors[len(items):], n)
    student, teacher = dev_slice_scores(before), dev_slice_scores(layout.round(1), "teacher")
    weights = S.slice_weights(student, teacher, loop.slices.weight)
    return S.pick_by_slices(items, n, weights, loop.slices.floor, seed)


def dev_errors(before: RunDir, with_items: bool = False) -> list[dict]:
    """The dev items the round before's student got wrong (headline score below 1), each with its input;
    `with_items`: the whole dev item (reference, references, slice, columns) and the student's `prediction`."""
    if not before.predictions.is_file():
        raise UserError(f"{before.predictions}: the round before has no dev predictions; run the loop from there")
    rows = pq.read_table(before.predictions,
                         columns=["set", "model", "item_id", C.INPUT, "prediction", "score"]).to_pylist()
    wrong = [r for r in rows
             if r["set"] == DEV_SET and r["model"] == "student" and r["score"] is not None and r["score"] < 1.0]
    if not with_items:
        return [{C.ID: r["item_id"], C.INPUT: r[C.INPUT]} for r in wrong]
    dev = {d[C.ID]: d for d in read_jsonl(before.dev)}
    return [{**dev[r["item_id"]], "prediction": r["prediction"]} for r in wrong]


def dev_slice_scores(round_run: RunDir, model: str = "student") -> dict[str, float] | None:
    """Headline dev score per slice of `model` in that round's evaluation (None when it was not evaluated)."""
    report = json.loads(round_run.eval_report.read_text()) if round_run.eval_report.is_file() else {}
    entry = report.get("sets", {}).get(DEV_SET, {}).get("models", {}).get(model)
    if entry is None:
        return None
    return {s: v["score"] for s, v in entry.get("slices", {}).items()} or {"None": entry["score"]}


def student_uncertainty(recipe: Recipe, items: list[dict], adapter: Path, u) -> dict[str, float]:
    """Per seed id, how unsure the round before's student is of its answer (higher: less sure), from its own vLLM
    engine: the disagreement of `u.samples` sampled answers, or minus the mean log-probability of its greedy answer."""
    from distill.loop.student import StudentAnswers

    with StudentAnswers(recipe, adapter) as student:
        if u.measure == "disagreement":
            answers = student.sample(items, n=u.samples, temperature=u.temperature)
            return {it[C.ID]: S.disagreement([a.text for a in outs]) for it, outs in zip(items, answers)}
        answers = student.sample(items, n=1, temperature=0.0, logprobs=1)
        return {it[C.ID]: -_mean(outs[0].capture.sampled_logprobs if outs[0].capture else []) for it, outs in
                zip(items, answers)}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
