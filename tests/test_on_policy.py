"""On-policy distillation, asked as a user would: does the student sample from the policy being trained, does the
teacher score exactly the student's tokens, does the gap to the teacher close, does a stopped run resume where it
stopped, and are the settings that would make the scores wrong refused before any work?

The student is the tiny model with a peaked output distribution; the teacher, the same with its attention changed
by a random low-rank step, so that there is a gap to close and the student's adapter can close it.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import TINY_RECIPE, run_cli, write_recipe

ON_POLICY = """\
  objective: on_policy
  learning_rate: 0.01
  on_policy: {{{{steps: {steps}, prompts_per_step: 8, max_tokens: 6, sync_every: {sync}, forward_kl_weight: {fkl}, top_k: {k}}}}}
"""


def _sharpened(folder: Path) -> Path:
    """The tiny model with its final norm scaled: a peaked next-token distribution instead of a near-uniform one."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        model.model.norm.weight.mul_(8.0)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> Path:
    from distill.models.tiny import build_tiny_model

    return _sharpened(build_tiny_model(tmp_path_factory.mktemp("student") / "qwen2", "qwen2"))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, student) -> Path:
    """The student's weights plus a random rank-4 change of its attention projections: a teacher the student's LoRA
    adapter can reach, far enough from it that there is a gap to close."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    folder = Path(shutil.copytree(student, tmp_path_factory.mktemp("teacher") / "qwen2"))
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight")):
                out, inp = weight.shape
                delta = torch.randn(out, 4, generator=generator) @ torch.randn(4, inp, generator=generator)
                weight.add_(delta * 0.3)
    model.save_pretrained(folder)
    return folder


def on_policy_recipe(folder: Path, student: Path, teacher: Path, steps: int = 4, sync: int = 1, fkl: float = 0.0,
                     k: int = 1, extra: str = "") -> Path:
    text = TINY_RECIPE.replace("  batch_size: 8\n", "  batch_size: 8\n" + ON_POLICY.format(steps=steps, sync=sync, fkl=fkl, k=k)
                               + extra)
    text = text.replace("  teacher: {{path: {model}, dtype: float32}}", f"  teacher: {{{{path: {teacher}, dtype: float32}}}}")
    return write_recipe(folder, student, text)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, student, teacher) -> tuple[Path, Path]:
    """(the recipe, a run directory whose generate and filter stages are done): each test trains on a copy of it,
    with its own train settings as overrides (train settings leave the earlier stages up to date)."""
    folder = tmp_path_factory.mktemp("on-policy")
    recipe = on_policy_recipe(folder, student, teacher)
    for stage in ("generate", "filter"):
        done = run_cli(stage, recipe, "--run-dir", folder / "run")
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return recipe, folder / "run"


def train(prepared, run: Path, *overrides: str, env: dict | None = None):
    """`distill train` on a copy of the prepared run directory."""
    recipe, ready = prepared
    if not run.exists():
        shutil.copytree(ready, run)
    old = dict(os.environ)
    os.environ.update(env or {})
    try:
        return run_cli("train", recipe, "--run-dir", run, *overrides)
    finally:
        os.environ.clear()
        os.environ.update(old)


def history(run: Path) -> list[dict]:
    return json.loads((run / "train" / "log.json").read_text())["history"]


# The run most tests read: twelve on-policy steps, reverse KL as the advantage plus forward KL over the top 20.
SETTINGS = ("train.on_policy.steps=12", "train.on_policy.forward_kl_weight=1.0", "train.on_policy.top_k=20")


@pytest.fixture(scope="module")
def trained(prepared, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    done = train(prepared, run, *SETTINGS)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return run


def test_the_adapter_that_samples_at_step_t_carries_the_update_of_step_t_minus_1(tmp_path, prepared, trained):
    """The sampler's log-probability of each sampled token equals the trained model's at that step (policy lag), and
    the same measure catches an engine left one update behind (sync_every: 2), so a stale engine would fail here."""
    lag = [h["policy_lag"] for h in history(trained)]
    assert len(lag) == 12 and max(lag) < 1e-3, lag

    behind = train(prepared, tmp_path / "behind", "train.on_policy.sync_every=2")
    assert behind.returncode == 0, behind.stdout[-3000:] + behind.stderr[-3000:]
    lag = [h["policy_lag"] for h in history(tmp_path / "behind")]
    assert max(lag[0], lag[2]) < 1e-3 and min(lag[1], lag[3]) > 1e-2, lag  # steps 2 and 4 sample the old adapter
    cost = json.loads((tmp_path / "behind" / "train" / "log.json").read_text())["cost"]
    assert cost["adapter_reloads"] == 2 and cost["on_policy_steps"] == 4
    assert cost["student_tokens_sampled"] == cost["teacher_tokens_scored"] > 0


def test_the_teacher_scores_exactly_the_students_tokens(tmp_path, prepared, teacher):
    """The teacher's log-probabilities are read at the student's sampled ids, after the teacher's own prompt, and equal
    a transformers forward pass of the teacher over the same ids; an answer that ends with EOS has its EOS scored."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.recipe import load_recipe
    from distill.run_dir import RunDir
    from distill.train.on_policy import OnPolicyLoop

    recipe_file, run = prepared[0], shutil.copytree(prepared[1], tmp_path / "run")
    loop = OnPolicyLoop(load_recipe(recipe_file), RunDir(run), kept=[])
    loop._models()
    loop._engines()
    try:
        adapter = loop._save_adapter(loop.adapters / "step-0")  # the fresh adapter: the base's answers
        samples = loop._sample(0, loop._batch(0), adapter)
        eos = loop.tokenizer.eos_token_id
        samples.append(replace(samples[0], ids=list(samples[0].ids[:3]) + [eos]))  # an answer that stopped with EOS
        loop._score(samples)
    finally:
        loop.sampler.close()
        loop.scorer.close()
    tok = AutoTokenizer.from_pretrained(teacher)
    model = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32).eval()
    for s in samples:
        assert s.teacher.token_ids == list(s.ids)  # ids and their positions, not a re-tokenisation of the text
        head = tok(s.teacher_prompt)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([head + list(s.ids)])).logits[0].float()
        lp = torch.log_softmax(logits, -1)
        expected = [lp[len(head) + j - 1, t].item() for j, t in enumerate(s.ids)]
        assert s.teacher.sampled_logprobs == pytest.approx(expected, abs=1e-4)
    assert samples[-1].teacher.token_ids[-1] == eos


def test_a_chat_student_samples_in_its_chat_format_and_the_teachers_stop_is_read_as_its_end_of_turn(
        tmp_path, prepared, teacher):
    """train.chat: the student answers in its chat template and stops with its end-of-turn token. A teacher that stops
    otherwise (here with <|endoftext|>) is asked for its own stop in that place, and its probability of stopping is
    what the student's end of turn is measured against, as KD reads a teacher's stop."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.recipe import load_recipe
    from distill.run_dir import RunDir
    from distill.train.on_policy import OnPolicyLoop

    other = Path(shutil.copytree(teacher, tmp_path / "teacher"))  # the same weights, another stop
    tok = AutoTokenizer.from_pretrained(other)
    tok.eos_token = "<|endoftext|>"
    tok.save_pretrained(other)
    model = AutoModelForCausalLM.from_pretrained(other, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(other)
    recipe = load_recipe(prepared[0], ["train.chat=true", "train.on_policy.top_k=20",
                                       f"models.teacher={{path: '{other}', dtype: float32}}"])
    loop = OnPolicyLoop(recipe, RunDir(shutil.copytree(prepared[1], tmp_path / "run")), kept=[])
    loop._models()
    loop._engines()
    try:
        end_of_turn = loop.tokenizer.convert_tokens_to_ids("<|im_end|>")
        assert loop.student_stop == end_of_turn and loop.teacher_stops == {tok.eos_token_id}
        samples = loop._sample(0, loop._batch(0), loop._save_adapter(loop.adapters / "step-0"))
        assert all(s.prompt.startswith("<|im_start|>user\n") and s.prompt.endswith("<|im_start|>assistant\n")
                   for s in samples)
        words = [t for t in samples[0].ids if t != end_of_turn][:3]
        samples.append(replace(samples[0], ids=words + [end_of_turn]))  # an answer that ended its turn
        loop._score(samples)
        loss, figures = loop._loss(samples)
    finally:
        loop.sampler.close()
        loop.scorer.close()
    assert torch.isfinite(loss) and figures["tokens"] == sum(len(s.ids) for s in samples)
    ended = samples[-1]
    assert ended.teacher.token_ids == ended.ids  # the student's tokens, its end of turn included
    head = tok(ended.teacher_prompt)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([head + words + [tok.eos_token_id]])).logits[0].float()
    stop = torch.log_softmax(logits[len(head) + len(words) - 1], -1)[tok.eos_token_id].item()  # its stop after them
    assert ended.teacher.sampled_logprobs[-1] == pytest.approx(stop, abs=1e-4)
    assert all(tok.eos_token_id not in ids for s in samples for ids in s.teacher.top_ids)  # read as the end of turn


def test_the_reverse_kl_to_the_teacher_falls_over_a_short_run(prepared, trained):
    from distill.run_dir import RunDir

    rkl = [h["reverse_kl"] for h in history(trained)]
    first, last = sum(rkl[:3]) / 3, sum(rkl[-3:]) / 3
    assert last < 0.8 * first, rkl
    # the rest of the run, evaluation and cards, finds the trained rows and states the cost
    documented = run_cli("run", prepared[0], "--run-dir", trained, *SETTINGS)
    assert documented.returncode == 0, documented.stdout[-3000:] + documented.stderr[-3000:]
    assert "[train] up to date" in documented.stdout
    card = (trained / "model_card.md").read_text()
    assert "reverse KL per token first / last" in card and "teacher tokens scored" in card
    # the evaluation report sets the cost beside the scores
    cost = json.loads((trained / "train" / "log.json").read_text())["cost"]
    report = json.loads((trained / "evaluate" / "report.json").read_text())
    assert report["training_cost"]["teacher_tokens_scored"] == cost["teacher_tokens_scored"] > 0
    generated = RunDir(trained).read_marker("generate")["summary"]["prompts"]
    assert report["training_cost"]["teacher_prompts"] == generated + cost["teacher_prompts_scored"]
    assert 0 < cost["teacher_prompts_scored"] <= 12 * 8  # one per non-empty answer
    assert cost["teacher_prompt_tokens_read"] > cost["teacher_prompts_scored"]
    text = (trained / "evaluate" / "report.md").read_text()
    assert (f"the student sampled {cost['student_tokens_sampled']} tokens, and the teacher read "
            f"{cost['teacher_prompts_scored']} prompts of {cost['teacher_prompt_tokens_read']} tokens to score "
            f"{cost['teacher_tokens_scored']} answer tokens") in text
    assert f"the teacher read {generated + cost['teacher_prompts_scored']} prompts in all" in text
    assert "trained_rows.parquet" in card
    # the card names the optimizer that ran, not the recipe's batch and epochs, which the loop does not read
    assert "AdamW" in card and "epochs" not in card


def test_a_stopped_run_resumes_from_its_checkpoint_without_repeating_or_skipping_steps(tmp_path, prepared, trained):
    stop = tmp_path / "stop"
    stop.write_text("")  # the scheduler asks at once: the first step ends with a checkpoint
    settings = (*SETTINGS[1:], "train.on_policy.steps=4")  # the first four steps of the run never stopped
    stopped = train(prepared, tmp_path / "split", *settings, env={"DISTILL_STOP_FILE": str(stop)})
    assert stopped.returncode == 75, stopped.stdout[-3000:] + stopped.stderr[-3000:]
    assert (tmp_path / "split" / "train" / "checkpoints" / "checkpoint-1").is_dir()
    stop.unlink()
    resumed = train(prepared, tmp_path / "split", *settings)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    a, b = history(trained), history(tmp_path / "split")
    assert [h["step"] for h in b] == list(range(1, 5))
    for x, y in zip(a, b):  # the same prompts, seeds and updates as the run that was never stopped
        assert x["tokens"] == y["tokens"] and x["loss"] == pytest.approx(y["loss"], abs=1e-4), (x, y)


def test_a_teacher_behind_a_server_scores_as_it_does_in_process(tmp_path, prepared, teacher, trained):
    """The teacher served by vLLM's OpenAI server (as `vllm serve` on other nodes, generate.backend: openai) scores the
    student's tokens over HTTP: the first step, sampled before any update, sees the same teacher log-probabilities as
    in process. A server that cannot return top_k of them is refused before any work, with the fix."""
    from conftest import vllm_server

    from distill.errors import UserError
    from distill.models.teacher import teacher_engine
    from distill.recipe import load_recipe
    from distill.run_dir import RunDir

    with vllm_server(teacher, tmp_path, "teacher", "--no-enable-prefix-caching", "--max-logprobs", "20") as url:
        served = ["generate.backend=openai", f"generate.endpoint={{url: '{url}'}}"]
        with pytest.raises(UserError, match=rf"generate\.endpoint: the server at {url} refused 50 prompt "
                                            r"log-probabilities .*--max-logprobs 50 or more"):
            teacher_engine(load_recipe(prepared[0], served), RunDir(prepared[1]), teacher, stage="train", seed=0,
                           max_logprobs=50, reads_prompt_logprobs=True)
        done = train(prepared, tmp_path / "run", *served, "train.on_policy.steps=2", *SETTINGS[1:])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "train" / "_COMPLETE.json").read_text())["summary"]
    assert summary["teacher_scored_by"] == {"backend": "openai", "url": url, "served_model": "teacher"}
    assert summary["cost"]["teacher_tokens_scored"] > 0
    here, there = history(trained)[0], history(tmp_path / "run")[0]
    assert here["tokens"] == there["tokens"]
    assert there["reverse_kl"] == pytest.approx(here["reverse_kl"], abs=1e-4)
    assert there["forward_kl"] == pytest.approx(here["forward_kl"], abs=1e-4)


def test_a_student_with_another_vocabulary_is_refused_before_any_work(tmp_path, tiny_model):
    from distill.models.tiny import build_tiny_model

    other = build_tiny_model(tmp_path / "other", "qwen2", vocab_size=600)
    recipe = on_policy_recipe(tmp_path, tiny_model, other)
    proc = run_cli("generate", recipe, "--run-dir", tmp_path / "run")
    assert proc.returncode == 2 and "share a vocabulary" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "generate" / "rows.parquet").exists()


def test_a_prefix_cached_scoring_engine_is_refused_before_any_work(tmp_path, student, teacher):
    recipe = on_policy_recipe(tmp_path, student, teacher)
    proc = run_cli("generate", recipe, "--run-dir", tmp_path / "run", "models.teacher.engine.prefix_caching=true")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "models.teacher.engine.prefix_caching: true, but train.objective on_policy" in proc.stderr
    assert not (tmp_path / "run" / "generate").exists()


@pytest.fixture(scope="module")
def mixed(prepared, tmp_path_factory) -> Path:
    """Six steps, half of them on the kept rows' text (lmbda 0.5), under a linear schedule with two warmup steps,
    weight decay and clipping: one training run for the two tests below."""
    run = tmp_path_factory.mktemp("mixed") / "run"
    done = train(prepared, run, "train.on_policy.steps=6", "train.on_policy.lmbda=0.5", "train.lr_scheduler=linear",
                 "train.warmup_steps=2", "train.weight_decay=0.1", "train.max_grad_norm=0.5")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return run


def test_lmbda_mixes_on_policy_steps_with_divergence_steps_on_the_kept_rows_text(mixed):
    """GKD's lmbda: about that share of steps sample the student; on the others the teacher scores kept rows' text and
    the student learns the divergence from its distributions there (not cross-entropy on the text). The two kinds of
    step have curves of their own, the teacher's reads of both are counted, and the rows file that evaluation reads
    names both kinds of text."""
    import pyarrow.parquet as pq

    steps = history(mixed)
    kinds = [h["on_policy"] for h in steps]
    assert True in kinds and False in kinds
    assert all(("reverse_kl" in h) == h["on_policy"] and ("divergence" in h) != h["on_policy"] for h in steps)
    assert not any("ce_loss" in h for h in steps)
    log = json.loads((mixed / "train" / "log.json").read_text())
    assert log["steps"] == [h["step"] for h in steps if h["on_policy"]]
    assert log["off_policy"]["steps"] == [h["step"] for h in steps if not h["on_policy"]]
    cost = log["cost"]
    assert cost["on_policy_steps"] == kinds.count(True) and cost["off_policy_steps"] == kinds.count(False)
    # the teacher read the sampled answers and the rows' text, each after a prompt of its own
    text_tokens = sum(h["tokens"] for h in steps if not h["on_policy"])
    assert cost["teacher_tokens_scored"] == cost["student_tokens_sampled"] + text_tokens
    assert cost["teacher_prompts_scored"] >= 8 * 6 and cost["teacher_prompt_tokens_read"] > cost["teacher_prompts_scored"]
    sources = set(pq.read_table(mixed / "train" / "on_policy" / "trained_rows.parquet").column("source").to_pylist())
    assert sources == {"student sample", "kept row"}


def test_the_on_policy_optimizer_follows_the_recipes_schedule_warmup_and_clipping(mixed):
    """train.lr_scheduler, warmup_steps, weight_decay and max_grad_norm shape the on-policy steps (of both kinds) as
    they shape SFT's, and the summary (hence the card) names the optimizer that ran."""
    from distill.run_dir import RunDir

    lr = 0.01  # the recipe's peak
    assert [h["learning_rate"] for h in history(mixed)] == pytest.approx([0.0, lr / 2, lr, 3 * lr / 4, lr / 2, lr / 4])
    assert all(h["grad_norm"] > 0 for h in history(mixed))
    summary = RunDir(mixed).read_marker("train")["summary"]
    assert summary["optimizer"] == {"name": "AdamW", "learning_rate": lr, "lr_scheduler": "linear", "warmup_steps": 2,
                                    "weight_decay": 0.1, "max_grad_norm": 0.5, "steps": 6, "prompts_per_step": 8,
                                    "samples_per_prompt": 1}


def test_start_from_sft_trains_sft_first_then_continues_on_policy_from_its_adapter(tmp_path, prepared):
    """SFT, then on-policy, in one run. The SFT phase is stopped by the scheduler after its first step and resumed
    from its checkpoint; it ends in train/sft/adapter, the on-policy loop starts from that adapter, and the texts
    evaluation checks for leaks include the rows the SFT phase trained on."""
    import pyarrow.parquet as pq

    from distill.run_dir import RunDir

    run, stop = tmp_path / "run", tmp_path / "stop"
    overrides = ("train.on_policy.steps=2", "train.on_policy.start_from=sft")
    stop.write_text("")
    stopped = train(prepared, run, *overrides, env={"DISTILL_STOP_FILE": str(stop)})
    assert stopped.returncode == 75, stopped.stdout[-3000:] + stopped.stderr[-3000:]
    assert (run / "train" / "sft" / "checkpoints" / "checkpoint-1").is_dir()
    assert not (run / "train" / "sft" / "adapter").exists()
    stop.unlink()
    done = train(prepared, run, *overrides)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = RunDir(run).read_marker("train")["summary"]
    phase = summary["sft_phase"]
    assert phase["resumed"] is True and phase["steps"] == 5 and phase["rows"] == 40  # 40 kept rows, 8 per step
    # the train stage's time is both phases' (the report's training cost reads it)
    assert summary["seconds"] == pytest.approx(phase["seconds"] + summary["on_policy_seconds"], abs=0.11)
    assert summary["steps"] == 2 and [h["step"] for h in history(run)] == [1, 2]
    record = json.loads((run / "train" / "adapter" / "training_data.json").read_text())
    assert record["start_adapter"] == str(run / "train" / "sft" / "adapter")
    sources = pq.read_table(run / "train" / "on_policy" / "trained_rows.parquet").column("source").to_pylist()
    assert sources.count("kept row (sft phase)") == 40 and "student sample" in sources


def test_repair_prompts_are_scored_by_the_base_student_and_never_an_evaluation_item(tmp_path, prepared):
    """Repair: part of each step's prompts come from a file of prompts like a guard set's and the base student scores
    the answers. Rows of that file that are evaluation items are left out and counted; at the first step the student
    is still the base model, so its reverse KL to the repair teacher is zero while the gap to the teacher is not."""
    import pyarrow.parquet as pq

    from distill.run_dir import RunDir

    recipe, ready = prepared
    held_out = [json.loads(line)["input"] for line in RunDir(ready).heldout.read_text().splitlines() if line.strip()]
    others = [f"word{i}" for i in range(20)]
    prompts = tmp_path / "repair.jsonl"
    prompts.write_text("".join(json.dumps({"text": w}) + "\n" for w in held_out[:10] + others))
    run = tmp_path / "run"
    done = train(prepared, run, "train.on_policy.steps=2", f"train.on_policy.repair={{path: {prompts}, input_field: text, "
                 "prompt_template: 'Say {{ input }}:', share: 0.5}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = RunDir(run).read_marker("train")["summary"]
    assert summary["repair"]["left_out_as_evaluation_items"] == 10 and summary["repair"]["prompts"] == 20
    steps = history(run)
    assert abs(steps[0]["repair_reverse_kl"]) < 1e-3 and steps[0]["task_reverse_kl"] > 0.1, steps[0]
    cost = summary["cost"]
    assert cost["repair_tokens_scored"] > 0 and cost["teacher_tokens_scored"] > 0
    assert cost["student_tokens_sampled"] == cost["teacher_tokens_scored"] + cost["repair_tokens_scored"]
    trained = pq.read_table(run / "train" / "on_policy" / "trained_rows.parquet").to_pylist()
    repaired = {r["input"] for r in trained if r["source"] == "student sample (repair)"}
    assert repaired and repaired <= set(others)  # 4 repair prompts a step, 2 steps: 8 of the 20, none held out
