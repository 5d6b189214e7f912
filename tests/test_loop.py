"""The closed loop: the teacher answers, round by round, only the prompts chosen where the student is weak.

What a user asks of it: does each strategy choose what it says? Is the dev split apart from training and from the
test split? Does a round continue the adapter before it and see no test item? Is no prompt answered twice, even
when a killed loop is started again? Does every row say its round and why it was chosen? When does it stop?

A loop end to end (its rounds' rows, provenance, dev and test kept apart, resume with `distill run`) runs in
tests/test_slurm.py, submitted as the chain of round jobs a cluster runs, then taken up by `distill run`.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from conftest import run_cli, write_recipe, TINY_RECIPE
from distill import rows as C
from distill.loop import strategies as S
from distill.loop.layout import SELECT, LoopDir
from distill.loop.run import round_recipe, stop_reason
from distill.recipe import load_recipe
from distill.run_dir import RunDir

LOOP = """\
loop:
  rounds: 2
  strategy: errors
  budget: {per_round: 10}
  dev: {size: 12, min_per_slice: 2}
  plateau: null
"""


def _item(i: int, slice_: str = "regular") -> dict:
    return {C.ID: f"s{i}", C.INPUT: f"word{i}", C.SLICE: slice_}


# ------------------------------------------------------------------ how each strategy chooses

def test_random_draws_the_asked_number_reproducibly():
    items = [_item(i) for i in range(50)]
    first, again = S.pick_random(items, 10, seed=3), S.pick_random(items, 10, seed=3)
    assert [it[C.ID] for it, _ in first] == [it[C.ID] for it, _ in again]
    assert len({it[C.ID] for it, _ in first}) == 10
    assert len(S.pick_random(items[:4], 10, seed=3)) == 4  # never more than the pool holds


def test_uncertainty_takes_the_prompts_the_student_is_least_sure_of():
    items = [_item(i) for i in range(6)]
    scores = {"s0": 0.0, "s1": 0.75, "s2": 0.5, "s3": 0.0, "s4": 0.75, "s5": 0.25}
    chosen = S.pick_uncertain(items, scores, 3, seed=0, measure="disagreement")
    assert {it[C.ID] for it, _ in chosen} == {"s1", "s4", "s2"}
    assert chosen[-1][1] == {"strategy": "uncertainty", "measure": "disagreement", "score": 0.5}
    assert S.disagreement(["cats", "cats ", "Cats", "dogs"]) == 0.25  # whitespace and case folded
    assert S.disagreement(["a", "a"]) == 0.0


def test_errors_spread_the_round_over_every_dev_error():
    """Two dev errors, one with many close seeds: each error still gets its nearest seeds in turn."""
    items = [_item(i) for i in range(6)]
    vectors = np.array([[1, 0], [0.99, 0.14], [0.98, 0.2], [0.97, 0.24], [0, 1], [0.1, 0.99]])
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    errors = [{C.ID: "dev-a", C.INPUT: "x"}, {C.ID: "dev-b", C.INPUT: "y"}]
    error_vectors = np.array([[1.0, 0.0], [0.0, 1.0]])
    chosen = S.pick_near_errors(items, vectors, errors, error_vectors, 4)
    assert [it[C.ID] for it, _ in chosen] == ["s0", "s4", "s1", "s5"]
    assert [why["near"] for _, why in chosen] == ["dev-a", "dev-b", "dev-a", "dev-b"]
    assert chosen[0][1]["similarity"] == 1.0


def test_errors_synthesize_spreads_the_writes_over_the_dev_errors():
    """LLM2LLM: each dev error gets its first write, then each its second; more errors than writes: some at random."""
    from distill.loop.written import plan_writes

    errors = [{C.ID: f"dev-{c}"} for c in "abc"]
    plan = plan_writes(errors, 7, seed=1)
    assert sorted((e[C.ID], j) for e, j in plan) == [("dev-a", 0), ("dev-a", 1), ("dev-a", 2), ("dev-b", 0),
                                                      ("dev-b", 1), ("dev-c", 0), ("dev-c", 1)]
    assert [j for _, j in plan] == [0, 0, 0, 1, 1, 1, 2]
    assert plan == plan_writes(errors, 7, seed=1)  # reproducible
    assert len({e[C.ID] for e, _ in plan_writes(errors + [{C.ID: "dev-d"}], 2, seed=1)}) == 2
    assert plan_writes([], 5, seed=1) == []


def test_a_written_input_that_cannot_be_a_new_prompt_is_dropped_with_its_reason():
    from distill.evaluate.metrics.normalize import normalize
    from distill.loop.written import accept

    known = {normalize("The  Cat", ignore_case=True)}
    assert accept("  \n", "stop", known) == "empty"
    assert accept("box", "length", known) == "cut off at errors.max_tokens"  # an input ended mid-way
    assert accept("the cat ", "stop", known) == "a copy of an input the run already has"  # case and spaces folded
    assert accept("the dog", "stop", known) is None
    assert accept(" Cat", "stop", known, start="the") == "a copy of an input the run already has"  # with errors.start
    assert accept(" ", "stop", known, start="Utterance:") == "empty"  # the given start alone is no input


def test_a_generation_template_that_reads_another_column_is_refused_before_the_teacher_writes(tmp_path, tiny_model):
    """A written input has no source row: a template reading the data's `comment` column cannot ask about it."""
    from distill.errors import UserError
    from distill.loop.select import check_template_reads_input_only

    synthesize = LOOP.replace("plateau: null", "plateau: null\n  errors: {synthesize: true}")
    recipe = load_recipe(_loop_recipe(tmp_path, tiny_model, synthesize))
    pool = [{**_item(i), C.REFERENCE: f"word{i}s"} for i in range(4)]
    check_template_reads_input_only(recipe, pool)  # the recipe's template reads the input alone
    reads_comment = recipe.model_copy(update={"generate": recipe.generate.model_copy(
        update={"template": "{{ comment }}: plural of '{{ input }}'?"})})
    with pytest.raises(UserError, match=r"an input the teacher writes has no other column, but generate.template: "
                                        r"template failed to render: 'comment' is undefined"):
        check_template_reads_input_only(reads_comment, pool)


def test_slices_split_the_round_by_the_gap_to_the_teacher():
    weights = S.slice_weights({"regular": 0.9, "irregular": 0.3}, {"regular": 0.9, "irregular": 0.8}, "gap")
    assert weights == {"regular": 0.0, "irregular": pytest.approx(0.5)}
    # the solved slice keeps the floor's share; the rest goes where the gap is
    assert S.allocate(20, weights, {"regular": 100, "irregular": 100}, floor=0.1) == {"regular": 2, "irregular": 18}
    # a slice cannot give more prompts than it has left: the others take the rest
    assert S.allocate(20, weights, {"regular": 100, "irregular": 5}, floor=0.1) == {"regular": 15, "irregular": 5}
    assert S.slice_weights({"a": 0.5, "b": 1.0}, None, "variance") == {"a": 0.25, "b": 0.0}
    items = [_item(i, "irregular" if i < 8 else "regular") for i in range(40)]
    chosen = S.pick_by_slices(items, 10, weights, floor=0.1, seed=0)
    assert sum(why["slice"] == "irregular" for _, why in chosen) == 8  # all it has
    assert len(chosen) == 10


# ------------------------------------------------------------------ the recipe section

def _loop_recipe(folder, tiny_model, loop: str = LOOP, text: str = TINY_RECIPE):
    """The tiny recipe with a loop section (written after the template is filled in: it has braces of its own)."""
    path = write_recipe(folder, tiny_model, text)
    path.write_text(path.read_text() + loop)
    return path


def test_a_round_answers_its_selection_continues_the_adapter_and_sees_no_test_item(tmp_path, tiny_model):
    recipe = load_recipe(_loop_recipe(tmp_path, tiny_model))
    layout = LoopDir(RunDir(tmp_path / "runs" / "tiny"))
    for k in (1, 2):  # the files a round's recipe names exist once its select step and the round before ran
        layout.selection(k).parent.mkdir(parents=True)
        layout.selection(k).write_text("")
    (layout.round(1).adapter).mkdir(parents=True)
    (layout.round(1).adapter / "adapter_config.json").write_text("{}")
    first, second = round_recipe(recipe, layout, 1), round_recipe(recipe, layout, 2)
    assert first.data.answer_only == str(layout.selection(1)) and first.train.init_adapter is None
    assert second.train.init_adapter == str(layout.round(1).adapter)
    dev = first.evaluate.sets[0]
    assert (dev.name, dev.data) == ("dev", "dev")
    assert [s.name for s in first.evaluate.sets] == ["dev", "plural"]  # the test set stays, for decontamination
    assert first.evaluate.measure == ["dev"]  # ... but no round scores it
    assert first.evaluate.models == ["base", "student", "teacher"] and second.evaluate.models == ["student"]


@pytest.mark.parametrize("loop, expected", [
    ("loop: {rounds: 2, strategy: slices, budget: {per_round: 5}, dev: {size: 4}}\n", "data.slice_field is null"),
    ("loop: {rounds: 2, budget: {per_round: 5, prompts: 3}, dev: {size: 4}}\n", "less than one round's"),
    ("loop: {rounds: 2, strategy: guess, budget: {per_round: 5}, dev: {size: 4}}\n", "loop.strategy"),
    ("loop: {rounds: 2, budget: {per_round: 5}, dev: {size: 4}, errors: {synthesize: true}}\n",
     "the teacher writes inputs from the dev errors of strategy errors, but loop.strategy is random"),
    ("loop: {rounds: 2, train: retrain, budget: {per_round: 5}, dev: {size: 4}}\n",
     "retrain trains each round on the rows of every round so far, with objective sft only, but train.objective is kd"),
])
def test_a_bad_loop_section_is_refused_before_any_work(tmp_path, tiny_model, loop, expected):
    text = TINY_RECIPE.replace("  slice_field: comment\n", "") if "slices" in loop else TINY_RECIPE
    if "retrain" in loop:
        text = text.replace("  batch_size: 8\n", "  batch_size: 8\n  objective: kd\n")
    recipe = _loop_recipe(tmp_path, tiny_model, loop, text)
    result = run_cli("validate", recipe)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr and "Traceback" not in result.stderr


def test_a_token_budget_per_round_sizes_each_round_by_the_answers_before_it():
    from distill.recipe.loop import LoopSettings

    loop = LoopSettings.model_validate({"rounds": 4, "budget": {"per_round": 10, "prompts": 25, "round_tokens": 30},
                                        "dev": {"size": 4}})
    assert loop.round_budget(0, None) == 10  # round 1: no answer measured yet
    assert loop.round_budget(10, 4.0) == 7  # 30 tokens at 4 an answer
    assert loop.round_budget(10, 2.5) == 10  # never more than per_round ...
    assert loop.round_budget(20, 2.5) == 5  # ... nor than the budget has left
    assert loop.round_budget(10, 90.0) == 1  # a round answers at least one prompt


def test_with_synthesis_a_round_is_sized_by_what_a_prompt_cost_the_teacher_before_it(tmp_path):
    """budget.round_tokens: the mean cost per prompt of the rounds before is the teacher's answers and, where it wrote
    the round's inputs (errors.synthesize), its writing too (dropped writes included)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from distill.loop.select import mean_teacher_tokens

    layout = LoopDir(RunDir(tmp_path / "run"))
    for k, written in ((1, None), (2, 60)):
        here = layout.round(k)
        here.generated.parent.mkdir(parents=True)
        pq.write_table(pa.table({C.PROVENANCE: [{"completion_tokens": 4}] * 10}), here.generated)
        here.mark_complete(SELECT, "fp", {"selected": 10, **({"written_tokens": written} if written else {})})
    assert mean_teacher_tokens(layout, 1) is None
    assert mean_teacher_tokens(layout, 2) == 4.0  # round 1: answers only
    assert mean_teacher_tokens(layout, 3) == (40 + 40 + 60) / 20  # round 2 wrote its 10 inputs in 60 tokens


def test_a_loop_given_more_rounds_or_budget_after_it_stopped_keeps_its_rounds(tmp_path, tiny_model):
    """A round's choice is up to date while what shapes it is unchanged: its own number of prompts, not the loop's
    total. More rounds, or a larger budget, leave the finished rounds' selections standing (the loop goes on from
    the last); a budget that changes what a round takes makes that round choose again."""
    from distill.loop.select import selection_fingerprint

    def fingerprints(loop_text, rounds=(1, 2)):
        recipe = load_recipe(_loop_recipe(tmp_path, tiny_model, loop_text))
        return [selection_fingerprint(recipe, RunDir(tmp_path / "run"), k) for k in rounds]

    layout = LoopDir(RunDir(tmp_path / "run"))
    layout.selection(1).parent.mkdir(parents=True)  # round 1 chose 10 seeds
    layout.selection(1).write_text("".join(f'{{"id": "s{i}", "why": {{"round": 1}}}}\n' for i in range(10)))
    layout.round(1).mark_complete(SELECT, "fp", {"selected": 10})
    random = LOOP.replace("strategy: errors", "strategy: random")
    first = fingerprints(random)  # 2 rounds of 10
    assert fingerprints(random.replace("rounds: 2", "rounds: 5")) == first  # rounds 1 and 2 take what they took
    assert fingerprints(random.replace("budget: {per_round: 10}", "budget: {per_round: 10, prompts: 100}")) == first
    short = fingerprints(random.replace("budget: {per_round: 10}", "budget: {per_round: 10, prompts: 15}"))
    assert short[0] == first[0] and short[1] != first[1]  # round 2 now takes 5: it chooses again


def test_an_explored_share_of_each_round_is_drawn_at_random_beside_the_strategys_choice(tmp_path, tiny_model):
    """loop.explore 0.5: of round 2's 10 prompts, the strategy chooses 5 and 5 more are drawn at random from the seeds
    it left; each says which it is. Round 1 draws at random anyway; explore 0 leaves a loop's choices as they were."""
    import json

    from distill.loop.select import run_select, selection_fingerprint

    recipe = load_recipe(_loop_recipe(tmp_path, tiny_model, LOOP.replace("strategy: errors",
                                                                           "strategy: slices\n  explore: 0.5")))
    run = RunDir(tmp_path / "runs" / "tiny")
    layout = LoopDir(run)
    assert run_select(recipe, run, 1)["selected"] == 10 and "explored" not in run_select(recipe, run, 1)
    # round 1's dev scores: the regular nouns far behind the teacher, the irregular ones level with it
    layout.round(1).eval_report.parent.mkdir(parents=True)
    layout.round(1).eval_report.write_text(json.dumps({"sets": {"dev": {"models": {
        "student": {"score": 0.3, "slices": {"regular": {"score": 0.2}, "irregular": {"score": 0.9}}},
        "teacher": {"score": 0.9, "slices": {"regular": {"score": 0.9}, "irregular": {"score": 0.9}}}}}}}))
    summary = run_select(recipe, run, 2)
    chosen = [(e["id"], e["why"]) for e in map(json.loads, layout.selection(2).read_text().splitlines())]
    assert summary["selected"] == 10 and summary["explored"] == 5
    explored = [why for _, why in chosen if "explore" in why]
    assert len(explored) == 5 and all(why["strategy"] == "random" and why["explore"] == 0.5 for why in explored)
    assert sum(why["strategy"] == "slices" for _, why in chosen) == 5
    ids = [i for i, _ in chosen]
    assert len(set(ids)) == 10 and not set(ids) & layout.answered_before(2)  # no seed twice, none of round 1's
    plain = load_recipe(_loop_recipe(tmp_path, tiny_model, LOOP.replace("strategy: errors", "strategy: slices")))
    assert selection_fingerprint(plain, run, 1) == selection_fingerprint(recipe, run, 1)
    assert selection_fingerprint(plain, run, 2) != selection_fingerprint(recipe, run, 2)


def _record(k, student, prompts, guard=()):
    return {"round": k, "dev": {"student": student}, "higher_is_better": True, "dev_metric": "exact_match",
            "teacher_prompts": prompts, "teacher_tokens": prompts * 5, "guard_degraded": list(guard)}


def test_the_loop_stops_at_a_plateau_a_degraded_guard_or_the_budget(tmp_path, tiny_model):
    recipe = load_recipe(_loop_recipe(tmp_path, tiny_model, LOOP.replace("rounds: 2", "rounds: 5").replace(
        "plateau: null", "plateau: {min_gain: 0.02, patience: 2}")))
    rising = [_record(1, 0.2, 10), _record(2, 0.3, 20)]
    assert stop_reason(recipe, rising, pool_left=10) is None
    flat = rising + [_record(3, 0.31, 30), _record(4, 0.29, 40)]
    assert stop_reason(recipe, flat, pool_left=10).startswith("plateau")
    assert stop_reason(recipe, flat[:3], pool_left=10) is None  # one flat round is not yet two
    assert stop_reason(recipe, rising + [_record(3, 0.5, 30, guard=["arithmetic"])], 10).startswith("guard set degraded")
    assert stop_reason(recipe, rising, pool_left=0) == "pool: every seed answered"
    assert stop_reason(recipe, rising + [_record(3, 0.5, 30), _record(4, 0.6, 40), _record(5, 0.7, 50)],
                       10).startswith("budget: 50 teacher prompts")


def test_the_loop_report_says_which_prompts_were_written_or_explored_and_that_dev_was_trained_toward():
    from distill.loop.report import loop_markdown

    rounds = [{**_record(1, 0.2, 10), "strategy": "random", "prompts": 10, "kept": 9, "dev": {"student": 0.2}},
              {**_record(2, 0.4, 18), "strategy": "errors", "prompts": 8, "kept": 8, "written": 8,
               "teacher_tokens": 130}]
    record = {"strategy": "errors", "total_prompts": 20, "budget": {"per_round": 10}, "dev_size": 12,
              "rounds": rounds, "stopped": "rounds: 2", "final_round": 2}
    text = loop_markdown(record, None)
    assert "| 2 | errors | 8 (18) | 130 | 8 | 0.400 (the loop's student) |" in text
    assert "round 2: 8 of its 8 prompts" in text and "Dev is trained toward" in text
    assert "wrote inputs" not in loop_markdown({**record, "rounds": rounds[:1], "final_round": 1}, None)
    assert "continued the adapter of the round before" in text
    assert "a fresh adapter on the rows of every round so far" in loop_markdown({**record, "train": "retrain"}, None)
    explored = loop_markdown({**record, "rounds": [rounds[0], {**rounds[1], "explored": 4}]}, None)
    assert "drawn at random beside the strategy's choice (loop.explore): round 2: 4 of its 8 prompts" in explored


def test_a_selection_naming_no_seed_of_the_pool_is_refused_with_its_file(tmp_path, tiny_model):
    from distill.data.split import selected
    from distill.errors import DataError

    chosen = tmp_path / "selected.jsonl"
    chosen.write_text('{"id": "s1", "why": {"round": 1}}\n{"id": "nope"}\n')
    path = _loop_recipe(tmp_path, tiny_model, loop="")
    path.write_text(path.read_text().replace("  max_seeds: 40\n", f"  max_seeds: 40\n  answer_only: {chosen}\n"))
    recipe = load_recipe(path)
    pool = [_item(i) for i in range(3)]
    with pytest.raises(DataError, match=r"selected.jsonl: 1 id\(s\) are no seed of this data's pool \(first: nope\)"):
        selected(recipe, pool)
    chosen.write_text('{"id": "s1", "why": {"round": 1}}\n\n{"id": "s0"}\n')
    assert [(s[C.ID], s[C.SELECTION]) for s in selected(recipe, pool)] == [("s0", None), ("s1", {"round": 1})]
    chosen.write_text('["s1"]\n')
    with pytest.raises(DataError, match=r"selected.jsonl:1: expected a JSON object"):
        selected(recipe, pool)
    # an input the teacher wrote (loop.errors.synthesize) comes after the pool's seeds, with no reference
    chosen.write_text('{"id": "w1", "input": "ox", "slice": "irregular", "why": {"round": 2, "written_from": "d3"}}\n'
                      '{"id": "s2", "why": {"round": 2}}\n')
    seed, written = selected(recipe, pool)
    assert seed[C.ID] == "s2"
    assert (written[C.ID], written[C.INPUT], written[C.REFERENCE], written[C.SLICE]) == ("w1", "ox", None, "irregular")
    assert written[C.SELECTION] == {"round": 2, "written_from": "d3"} and written[C.COLUMNS] is None
    chosen.write_text('{"id": "w1", "input": ["ox"]}\n')
    with pytest.raises(DataError, match=r"selected.jsonl:1: expected a JSON object with an \"id\""):
        selected(recipe, pool)


def test_evaluate_measure_names_sets_of_the_recipe(tmp_path, tiny_model):
    """evaluate.measure scores a subset of the sets (what a round uses); a name that is no set is refused."""
    path = write_recipe(tmp_path, tiny_model)
    path.write_text(path.read_text() + "  measure: [plurals]\n")  # inside evaluate, the recipe's last section
    result = run_cli("validate", path)
    assert result.returncode == 2 and "measure names ['plurals']; the sets are ['plural']" in result.stderr


def test_doctor_measures_the_prompts_the_loop_may_send_the_teacher_and_no_dev_item(tmp_path, tiny_model, doctor):
    recipe = _loop_recipe(tmp_path, tiny_model)  # 40 seeds, 12 of them set aside as dev
    proc = doctor(recipe)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "teacher prompt" in proc.stdout and "over 28 prompts" in proc.stdout


def test_doctor_finds_written_inputs_longer_than_training_takes(tmp_path, tiny_model, doctor):
    """errors.synthesize: an input the teacher may write at errors.max_tokens, in the student's prompt with its answer,
    must fit train.max_length (48 here), or the round's rows lose their end in training rounds into the loop."""
    recipe = _loop_recipe(tmp_path, tiny_model)
    long = doctor(recipe, "loop.errors.synthesize=true")  # errors.max_tokens: 128 by default
    assert long.returncode == 2, long.stdout
    problem = next(line for line in long.stdout.splitlines() if "PROBLEM" in line)
    assert "loop.errors.max_tokens: 128, but train.max_length is 48: the student's prompt" in problem
    room = int(re.search(r"lower loop.errors.max_tokens to (\d+)", problem).group(1))
    assert 0 < room < 48 - 6  # the answer's 6 tokens (generate.sampling.max_tokens) and the prompt take the rest
    fits = doctor(recipe, "loop.errors.synthesize=true", f"loop.errors.max_tokens={room}")
    assert fits.returncode == 0, fits.stdout
    assert f"ok       loop.errors.max_tokens {room}: fits train.max_length 48" in fits.stdout
    assert doctor(recipe, "loop.errors.synthesize=true", f"loop.errors.max_tokens={room + 1}").returncode == 2
    assert "loop.errors" not in doctor(recipe).stdout  # nothing to say without synthesize
