"""White-box distillation, as a user asks about it: does the capture hold what the teacher computed, does the student
learn the teacher's distribution, and is a student that cannot read the teacher's token ids refused before any work?"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import ROOT, run_cli, write_recipe

from distill import rows as C
from distill.data.captures import captured_completion
from distill.errors import RecipeError
from distill.recipe import load_recipe
from distill.run_dir import RunDir
from distill.train.kd import kd_example

K = 5
KD = ("generate.logprobs=5", "generate.sampling.temperature=1.0")  # sampled: the tiny model writes varied tokens


@pytest.fixture(scope="module")
def captured(tmp_path_factory, tiny_model):
    """generate (capturing the top 5) and filter: what the train stage reads. The teacher is the tiny model made
    confident (a random model's next-token distribution is nearly flat, and two flat distributions are already close);
    the student is the tiny model itself, on the same vocabulary."""
    import shutil

    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("kd")
    teacher = folder / "teacher"
    shutil.copytree(tiny_model, teacher)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    model.model.norm.weight.data *= 40  # logits 40 times larger: a peaked distribution at every position
    model.save_pretrained(teacher)
    recipe = write_recipe(folder, tiny_model)
    recipe.write_text(recipe.read_text().replace(f"teacher: {{path: {tiny_model}, dtype: float32}}", f"teacher: {{path: {teacher}, dtype: float32}}"))
    run = folder / "base"
    for stage in ("generate", "filter"):
        proc = run_cli(stage, recipe, *KD, "--run-dir", run)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return folder, recipe, RunDir(run)


def test_every_generated_token_carries_the_teachers_top_k_as_a_forward_pass_computes_it(captured):
    folder, _, run = captured
    rows = pq.read_table(run.generated).to_pylist()
    captures = {c["id"]: c for c in pq.read_table(run.teacher_logprobs).to_pylist()}
    assert set(captures) == {r[C.ID] for r in rows}
    assert rows[0][C.PROVENANCE]["logprobs"] == {"k": K, "mode": "raw_logprobs", "distribution": "raw",
                                                       "captured": True}

    assert_captures_are_the_teachers_forward_pass(folder / "teacher", rows[:6], captures)


def assert_captures_are_the_teachers_forward_pass(teacher: Path, rows: list[dict], captures: dict) -> None:
    """Each row's captured top-K, sampled log-probability and tail mass, as a transformers forward pass of the
    teacher over the row's prompt and the captured tokens computes them."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(teacher)
    model = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32).eval()
    for row in rows:
        c = captures[row[C.ID]]
        assert len(c["token_ids"]) == len(c["top_ids"]) == row[C.PROVENANCE]["completion_tokens"]
        assert tokenizer.decode(c["token_ids"]).startswith(row[C.COMPLETION])
        prompt = tokenizer(row[C.PROMPT])["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([prompt + c["token_ids"]])).logits[0].float()
        # position len(prompt) - 1 + t predicts generated token t
        expected = logits[len(prompt) - 1: len(prompt) - 1 + len(c["token_ids"])].log_softmax(-1)
        for t, token in enumerate(c["token_ids"]):
            top = expected[t].topk(K)
            assert c["top_logprobs"][t] == pytest.approx(top.values.tolist(), abs=2e-3)
            assert set(c["top_ids"][t]) == set(top.indices.tolist()) or \
                top.values[-1] - expected[t].topk(K + 1).values[-1] < 2e-3  # a tie at the K-th place
            assert c["sampled_logprobs"][t] == pytest.approx(expected[t][token].item(), abs=2e-3)
            assert c["tail_mass"][t] == pytest.approx(1 - top.values.exp().sum().item(), abs=2e-3)


@pytest.fixture(scope="module")
def kd_run(captured):
    """The captured run, trained with objective kd."""
    import shutil

    folder, recipe, base = captured
    run = folder / "kd"
    shutil.copytree(base.root, run)
    proc = run_cli("train", recipe, *KD, "train.objective=kd", "train.epochs=3", "train.learning_rate=3e-3",
                   "--run-dir", run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


CHAT = (*KD, "generate.chat=true", "train.chat=true", "train.objective=sft+kd", "generate.sampling.max_tokens=12")


@pytest.fixture(scope="module")
def chat_kd(captured, tiny_model):
    """A teacher prompted through its chat template, and a chat student trained with sft+kd on its tokens: the common
    case of an instruct student (its prompt a user turn, its answer the assistant turn). The teacher is the tiny model
    sampled at temperature 1 (the confident one answers a chat prompt with the newline the template ends with)."""
    folder, recipe, _ = captured
    run = RunDir(folder / "chat")
    overrides = (*CHAT, f"models.teacher={{path: {tiny_model}, dtype: float32}}")
    proc = run_cli("generate", recipe, *overrides, "--run-dir", run.root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return recipe, run, overrides


def test_a_chat_teachers_captures_are_its_forward_pass_over_the_chat_prompt(chat_kd, tiny_model):
    _, run, _ = chat_kd
    rows = pq.read_table(run.generated).to_pylist()
    assert rows[0][C.PROMPT].startswith("<|im_start|>user\n") and rows[0][C.PROMPT].endswith("<|im_start|>assistant\n")
    captures = {c["id"]: c for c in pq.read_table(run.teacher_logprobs).to_pylist()}
    assert_captures_are_the_teachers_forward_pass(tiny_model, rows[:4], captures)


def test_a_chat_student_learns_the_teachers_tokens_as_its_assistant_turn(chat_kd, tiny_model):
    """Each training sequence is the student's chat prompt, the teacher's tokens, then the template's end-of-turn
    token; the teacher's distribution is at each of its tokens, and at the end of turn where the teacher stopped."""
    from transformers import AutoTokenizer

    from distill.prompts.student import student_stop_id
    from distill.prompts.template import chat_prompt
    from distill.train.formats import check_stop_learned
    from distill.train.kd import TeacherTargetCollator, kd_examples
    from distill.train.stage import build_trainer

    recipe_file, run, overrides = chat_kd
    recipe = load_recipe(recipe_file, list(overrides))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    kept = pq.read_table(run.generated).to_pylist()  # the filter step would keep them all (keep_truncated)
    examples, targets, used = kd_examples(recipe, kept, tokenizer, run.teacher_logprobs, {tokenizer.eos_token_id})
    assert len(examples) == len(kept) == targets["rows_with_teacher_targets"] > 0
    captures = {c["id"]: c for c in pq.read_table(run.teacher_logprobs).to_pylist()}
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for row_id, example in zip(used, examples):
        row = next(r for r in kept if r[C.ID] == row_id)
        prompt = tokenizer(chat_prompt(tokenizer, f"Plural of {row[C.INPUT]}:"), add_special_tokens=False)["input_ids"]
        tokens = captures[row_id]["token_ids"]
        ended = tokens[-1] == im_end
        answer = tokens[:-1] if ended else tokens[:len(example["input_ids"]) - len(prompt) - 1]
        assert example["input_ids"] == prompt + answer + [im_end]
        assert example["teacher_positions"][0] == len(prompt)
        assert len(example["teacher_positions"]) == len(answer) + ended  # the end-of-turn label only where it stopped
    # the trainer, as the train stage builds it, learns the end of turn as every example's stop
    trainer, _ = build_trainer(recipe, tiny_model, examples, run.root / "checkpoints")
    trainer.data_collator = TeacherTargetCollator(trainer.data_collator, 5)
    check = check_stop_learned(trainer, tokenizer, [], len(examples), recipe.train.max_length, 0.0,
                               student_stop_id(recipe, tokenizer))
    assert check["eos_token"] == "<|im_end|>" and check["rows_without_eos"] == 0


def test_kd_training_lowers_the_divergence_from_the_teacher(kd_run):
    run = kd_run
    log = json.loads((run / "train" / "log.json").read_text())
    summary = RunDir(run).read_marker("train")["summary"]
    targets = summary["teacher_targets"]
    # every kept row trains on the teacher's tokens and distributions
    assert targets["rows_with_teacher_targets"] == targets["rows"] == summary["rows"] > 0 and not targets["rows_left_out"]
    kd = log["kd_losses"]
    assert len(kd) >= 5 and sum(kd[-3:]) / 3 < 0.97 * sum(kd[:3]) / 3, kd  # per token, logged apart from CE
    assert len(log["ce_losses"]) == len(kd)
    # the logged terms add up to the loss (objective kd: weight 1, cross-entropy only where no distribution was given)
    for loss, ce, div in zip(log["losses"], log["ce_losses"], kd):
        assert loss == pytest.approx(ce + div, rel=2e-3, abs=2e-4)
    assert summary["last_kd_loss"] < summary["first_kd_loss"]
    assert (run / "train" / "loss_terms.png").stat().st_size > 0
    assert (run / "train" / "adapter" / "adapter_model.safetensors").is_file()


def test_the_report_says_how_close_each_model_is_to_the_teacher(captured, kd_run):
    """Fidelity on the teacher's own answers to the held-out items: the kd student is closer to the teacher than the
    base model it started from."""
    folder, recipe, _ = captured
    proc = run_cli("evaluate", recipe, *KD, "train.objective=kd", "train.epochs=3", "train.learning_rate=3e-3",
                   "--run-dir", kd_run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((kd_run / "evaluate" / "report.json").read_text())
    fidelity = report["fidelity"]["sets"]["plural"]
    base, student = fidelity["models"]["base"], fidelity["models"]["student"]
    assert "teacher" not in fidelity["models"] and fidelity["items"] + fidelity["items_without_teacher_tokens"] == 24
    assert base["tokens"] == student["tokens"] > 0
    assert student["kl_per_token"] < 0.97 * base["kl_per_token"]  # 5.65 against 5.96 when written
    assert student["top1_agreement"] >= base["top1_agreement"]
    assert "## Fidelity to the teacher" in (kd_run / "evaluate" / "report.md").read_text()
    assert "Fidelity to the teacher" in (kd_run / "evaluate" / "report.html").read_text()


def test_a_model_read_exactly_as_the_teacher_is_measured_identical_to_it(captured, kd_run, tmp_path):
    """The same weights under the same prompt: nothing between the teacher's capture (vLLM) and the student's forward
    pass (transformers) may be shifted by a token, so the KL is ~0 and the top-1 tokens agree."""
    import shutil

    folder, recipe, _ = captured
    run = tmp_path / "same"
    shutil.copytree(kd_run, run)
    proc = run_cli("evaluate", recipe, *KD, "train.objective=kd", "train.epochs=3", "train.learning_rate=3e-3",
                   f"models.student={{path: {folder / 'teacher'}}}", "evaluate.models=[base, teacher]",
                   "evaluate.teacher_template='Plural of {{ input }}:'", "--run-dir", run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    base = json.loads((run / "evaluate" / "report.json").read_text())["fidelity"]["sets"]["plural"]["models"]["base"]
    assert base["tokens"] > 0 and base["kl_per_token"] < 1e-3 and base["top1_agreement"] >= 0.98


def test_a_sampled_training_set_is_reproducible_and_the_adapter_names_its_rows(captured):
    folder, recipe, base = captured
    import shutil

    runs = []
    for name in ("sample-a", "sample-b"):
        run = folder / name
        shutil.copytree(base.root, run)
        proc = run_cli("train", recipe, *KD, "train.objective=sft+kd", "train.max_rows=7", "--run-dir", run)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs.append(RunDir(run))
    kept = [r[C.ID] for r in pq.read_table(base.filtered).to_pylist() if r[C.KEPT]]
    records = [json.loads((r.adapter / "training_data.json").read_text()) for r in runs]
    assert records[0]["row_ids"] == records[1]["row_ids"] and len(records[0]["row_ids"]) == records[0]["rows_used"] == 7
    assert records[0]["row_ids"] == [i for i in kept if i in set(records[0]["row_ids"])]  # in file order
    summary = runs[0].read_marker("train")["summary"]
    assert summary["rows"] == 7 and summary["rows_kept"] == len(kept) > 7


def test_score_mode_measures_the_teachers_distribution_on_the_real_targets(captured):
    """A real labelled set distilled with soft targets: the completion is the data's own target, and each of its
    tokens carries the teacher's top K as a forward pass of the teacher over prompt + target computes it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.data.captures import captured_completion

    folder, recipe, _ = captured
    run = RunDir(folder / "scored")
    proc = run_cli("generate", recipe, "generate.mode=score", "generate.logprobs=5", "--run-dir", run.root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = pq.read_table(run.generated).to_pylist()
    captures = {c["id"]: c for c in pq.read_table(run.teacher_logprobs).to_pylist()}
    seeds = {json.loads(line)["id"]: json.loads(line) for line in run.seeds.read_text().splitlines()}
    assert len(rows) == len(seeds) == len(captures)
    assert run.read_marker("generate")["summary"]["scored_with"].startswith("vllm prompt_logprobs")
    tokenizer = AutoTokenizer.from_pretrained(folder / "teacher")
    model = AutoModelForCausalLM.from_pretrained(folder / "teacher", dtype=torch.float32).eval()
    for row in rows:
        seed = next(s for s in seeds.values() if s["input"] == row[C.INPUT])
        assert row[C.COMPLETION] == " " + seed["reference"] and row[C.FAILURE] is None
        assert row[C.PROVENANCE]["scored"]["completion"] == "the seed's real target"
        # the teacher never finds the target it is scored on among its few-shot examples
        assert row[C.PROMPT].count(f"plural of '{row[C.INPUT]}'") == 1
        c = captures[row[C.ID]]
        # every scored token lines up with the text: kd training uses the whole target
        assert captured_completion(c, row[C.COMPLETION], tokenizer)[0] == (c["token_ids"], False)
    for row in rows[:5]:
        c = captures[row[C.ID]]
        prompt = tokenizer(row[C.PROMPT])["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([prompt + c["token_ids"]])).logits[0].float()
        expected = logits[len(prompt) - 1: len(prompt) - 1 + len(c["token_ids"])].log_softmax(-1)
        for t, token in enumerate(c["token_ids"]):
            assert c["top_logprobs"][t] == pytest.approx(expected[t].topk(K).values.tolist(), abs=2e-3)
            assert c["sampled_logprobs"][t] == pytest.approx(expected[t][token].item(), abs=2e-3)


INTENT = ROOT / "recipes" / "intent" / "data" / "intent_recognition.json"
LABEL_KD_RECIPE = """\
name: label-kd
models:
  teacher: {{path: {model}, dtype: float32}}
  student: {{path: {model}, dtype: float32}}
data:
  path: {data}
  target_field: null
  heldout: {{size: 20}}
  max_seeds: 16
generate:
  mode: label
  template: "{{{{ input }}}}\\nIntent:"
  label: {{choice: [" add_to_playlist", " get_weather", " play_music", " rate_book"]}}
  sampling: {{max_tokens: 24}}
  logprobs: 5
  chunk_size: 8
train: {{prompt_template: "{{{{ input }}}}\\nIntent:", objective: sft+kd, batch_size: 8, max_length: 96, lora: {{r: 4, alpha: 8}}}}
evaluate: {{sets: [{{name: intent, path: {data}, limit: 8}}]}}
"""


def test_label_mode_rows_train_with_kd_on_the_tokens_the_teacher_wrote(tmp_path, tiny_model):
    """recipes/intent writes its labels with the space the prompt leaves for them; the rows keep the bare label. KD
    still trains every row, on the teacher's tokens (space included), and the capture says it is the distribution
    under the label grammar."""
    recipe = write_recipe(tmp_path, tiny_model, LABEL_KD_RECIPE, data=INTENT)
    run = RunDir(tmp_path / "run")
    for stage in ("generate", "filter", "train"):
        proc = run_cli(stage, recipe, "--run-dir", run.root)
        assert proc.returncode == 0, proc.stderr[-3000:]
    rows = pq.read_table(run.generated).to_pylist()
    assert rows and all(r[C.COMPLETION] in ("add_to_playlist", "get_weather", "play_music", "rate_book") for r in rows)
    assert {r[C.PROVENANCE]["logprobs"]["distribution"] for r in rows} == {"constrained"}
    assert run.read_marker("generate")["summary"]["captured_distribution"] == "constrained"
    captures = list(pq.read_table(run.teacher_logprobs).to_pylist())
    # the grammar allows one of four labels, so most positions have fewer than 5 tokens with a probability
    assert any(float("-inf") in position for c in captures for position in c["top_logprobs"])
    targets = run.read_marker("train")["summary"]["teacher_targets"]
    kept = sum(r[C.KEPT] for r in pq.read_table(run.filtered).to_pylist())
    assert targets["rows_with_teacher_targets"] == targets["rows"] == kept > 0 and not targets["rows_left_out"]
    log = json.loads((run.root / "train" / "log.json").read_text())
    assert all(math.isfinite(x) and x < 50 for x in log["kd_losses"]), log["kd_losses"]


def test_score_mode_needs_captures_and_the_in_process_engine(tiny_recipe):
    with pytest.raises(RecipeError, match="set logprobs"):
        load_recipe(tiny_recipe, ["generate.mode=score"])
    with pytest.raises(RecipeError, match="sampling.n must be 1"):
        load_recipe(tiny_recipe, ["generate.mode=score", "generate.logprobs=5", "generate.sampling.n=2"])
    with pytest.raises(RecipeError, match="only by, mode: score"):
        load_recipe(tiny_recipe, ["generate.completion_template={{ target }}"])


def test_a_student_with_another_vocabulary_is_refused_before_any_work(tmp_path, tiny_model):
    from distill.models.tiny import build_tiny_model

    other = build_tiny_model(tmp_path / "other", "qwen2", vocab_size=600)
    recipe = write_recipe(tmp_path, tiny_model)
    recipe.write_text(recipe.read_text().replace(f"student: {{path: {tiny_model}, dtype: float32}}", f"student: {{path: {other}}}"))
    proc = run_cli("generate", recipe, *KD, "train.objective=sft+kd", "--run-dir", tmp_path / "run")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "share a vocabulary" in proc.stderr and str(tiny_model) in proc.stderr and str(other) in proc.stderr
    assert "objective: sft" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "generate" / "rows.parquet").exists()
    assert not list((tmp_path / "run").rglob("chunk-*.parquet"))


def test_kd_without_captured_distributions_is_a_recipe_error(tiny_recipe):
    with pytest.raises(RecipeError, match="generate.logprobs"):
        load_recipe(tiny_recipe, ["train.objective=kd"])
    with pytest.raises(RecipeError, match="top_k"):
        load_recipe(tiny_recipe, [*KD, "train.objective=kd", "train.kd.top_k=8"])


class TestWhichTokensGetTheTeachersDistribution:
    """The student trains on the teacher's tokens as generated; the stop is not part of the text."""

    @pytest.fixture
    def tokenizer(self, tiny_model):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(tiny_model)

    def capture(self, ids):
        return {"token_ids": ids, "top_ids": [[i, 0] for i in ids], "top_logprobs": [[-0.1, -3.0] for _ in ids]}

    def test_a_stop_string_ends_the_text_and_its_position_gets_only_the_eos_label(self, tokenizer):
        text = tokenizer(" cats")["input_ids"]
        (completion, teacher_eos), why = captured_completion(self.capture(text + tokenizer("\n")["input_ids"]),
                                                             " cats", tokenizer)
        assert why is None and completion == text and not teacher_eos
        example = kd_example([5, 6, 7], self.capture(text + [0]), completion, teacher_eos, tokenizer.eos_token_id, None)
        assert example["input_ids"] == [5, 6, 7, *text, tokenizer.eos_token_id]
        assert example["teacher_positions"] == list(range(3, 3 + len(text)))  # none at the EOS label
        assert [row[0] for row in example["teacher_ids"]] == text

    def test_a_teacher_that_stopped_with_eos_teaches_its_eos_distribution_too(self, tokenizer):
        text, eos = tokenizer(" cats")["input_ids"], tokenizer.eos_token_id
        (completion, teacher_eos), _ = captured_completion(self.capture(text + [eos]), " cats", tokenizer)
        example = kd_example([5], self.capture(text + [eos]), completion, teacher_eos, eos, 1)
        assert teacher_eos and example["teacher_positions"] == list(range(1, 2 + len(text)))
        assert all(len(row) == 1 for row in example["teacher_ids"])

    def test_a_label_kept_without_its_leading_space_trains_on_the_teachers_tokens_with_it(self, tokenizer):
        spaced, eos = tokenizer(" playlist")["input_ids"], tokenizer.eos_token_id
        (completion, teacher_eos), why = captured_completion(self.capture(spaced + [eos]), "playlist", tokenizer)
        assert why is None and completion == spaced and teacher_eos
        # only whitespace around the text may differ
        assert captured_completion(self.capture(spaced), "play list", tokenizer)[0] is None

    def test_a_row_whose_text_is_not_its_captured_tokens_is_left_out(self, tokenizer):
        text = tokenizer(" cats")["input_ids"]
        assert captured_completion(self.capture(text), " dogs", tokenizer) == (None, "text is not the captured tokens")
        assert captured_completion(None, " cats", tokenizer) == (None, "no capture")

    def test_bytes_of_a_character_cut_at_max_tokens_are_not_trained_on(self, tokenizer):
        ids = tokenizer(" cats é")["input_ids"]
        text = tokenizer.decode(ids[:-1])
        (completion, teacher_eos), _ = captured_completion(self.capture(ids[:-1] + [ids[-1]]), text, tokenizer)
        assert completion == ids[:-1] and not teacher_eos


class TestATeacherThatStopsWithAnotherToken:
    """An instruct teacher ends its turn with <|im_end|> where its base student stops with <|endoftext|>: the same
    vocabulary, another EOS. The teacher's stop must be the student's EOS, not an ordinary token it learns to write."""

    @pytest.fixture
    def tokenizer(self, tiny_model):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(tiny_model, eos_token="<|endoftext|>")  # the base student's EOS

    def test_the_teachers_stop_ends_the_text_and_its_probability_is_the_students_eos(self, tokenizer):
        student_eos = tokenizer.eos_token_id
        im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        text = tokenizer(" cats")["input_ids"]
        capture = {"token_ids": text + [im_end],
                   "top_ids": [[t, im_end, student_eos] for t in text] + [[im_end, 7, student_eos]],
                   "top_logprobs": [[-0.1, -3.0, -4.0] for _ in text] + [[-0.2, -2.0, -5.0]]}
        (completion, stopped), why = captured_completion(capture, " cats", tokenizer, {im_end})
        assert why is None and completion == text and stopped  # <|im_end|> is the stop, not part of the text
        example = kd_example([5, 6], capture, completion, stopped, student_eos, None, {im_end})
        assert example["input_ids"] == [5, 6, *text, student_eos]
        assert example["teacher_positions"] == list(range(2, 3 + len(text)))  # the EOS label learns the teacher's stop
        last_ids, last_lps = example["teacher_ids"][-1], example["teacher_logprobs"][-1]
        assert last_ids[0] == student_eos and im_end not in last_ids
        assert last_lps[0] == pytest.approx(math.log(math.exp(-0.2) + math.exp(-5.0)))  # both stops, summed
        assert last_lps[2] == float("-inf")  # the slot merged away holds no probability
        assert all(im_end not in ids for ids in example["teacher_ids"])  # at every position

    def test_the_stops_are_read_from_the_teachers_tokenizer_and_generation_config(self, tmp_path, tiny_model):
        import shutil

        from distill.models.vocabulary import stop_token_ids

        teacher = shutil.copytree(tiny_model, tmp_path / "instruct")
        config = json.loads((teacher / "generation_config.json").read_text())
        (teacher / "generation_config.json").write_text(json.dumps({**config, "eos_token_id": [2, 1]}))
        assert stop_token_ids(tiny_model) == {2} and stop_token_ids(teacher) == {1, 2}
