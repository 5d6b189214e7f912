"""On-policy distillation: the student samples, the teacher scores its tokens, the student learns from the difference.

Each step:
1. sample: the student's vLLM engine answers the step's seed prompts with the current adapter, loaded as a LoRA
   request of its own (vLLM caches adapters by id: an id reused for a new folder would serve the old weights);
2. score: the teacher's engine (no LoRA, no prefix caching) reads exactly those token ids after its own prompt for the
   same seed, teacher-forced, and returns each token's log-probability and its top K;
3. learn: a forward pass of the trained student over its prompt and the same tokens gives log p_student. The reverse
   KL per token, log p_sampler - log p_teacher, is the advantage of an importance-weighted policy gradient with
   discount 0 (tinker-cookbook's form); the forward KL over the teacher's top K and a tail bucket may be added (GKD's);
4. sync: the new adapter is saved to a folder of its own and sampled from at the next step.
With train.on_policy.repair, part of each step's prompts are like a guard set's and an earlier model (the base student)
scores the student's answers to them: the same loss pulls the student back toward what task training broke
(distill.train.repair).
A checkpoint holds the adapter, the optimizer, the step and the costs so far, so a killed run resumes at the next step
with the same prompts and seeds.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from distill import rows as C
from distill.data.eval_sets import seed_pool
from distill.errors import UserError
from distill.models.context import resolved_model
from distill.models.device import process_count
from distill.models.teacher import teacher_engine
from distill.models.vocabulary import stop_token_ids
from distill.preemption import Preempted, stop_requested
from distill.progress import progress
from distill.prompts.student import student_prompt, student_stop_id
from distill.prompts.teacher import teacher_prompts
from distill.prompts.template import PromptTemplate, chat_prompt, row_seed
from distill.prompts.tokens import continuation_ids, prompt_ids
from distill.recipe import Recipe
from distill.run_dir import RunDir, hash_file, write_json, write_parquet
from distill.train.repair import repair_prompts, repair_teacher_folder
from distill.train.stops import capture_with_stops_as_eos, teacher_reads

STATE = "on_policy_state.json"
TASK, REPAIR = "task", "repair"  # the kinds of prompt in a step: the seeds, and train.on_policy.repair's prompts
SOURCES = {TASK: "student sample", REPAIR: "student sample (repair)"}  # as trained_rows.parquet names them
OPTIMIZER = "optimizer.pt"


@dataclass
class Cost:
    """What the run spent, for the train log, the report and the model card."""

    student_tokens_sampled: int = 0
    teacher_tokens_scored: int = 0
    repair_tokens_scored: int = 0  # scored by the repair teacher (train.on_policy.repair)
    adapter_reloads: int = 0
    on_policy_steps: int = 0
    off_policy_steps: int = 0
    seconds: dict = field(default_factory=lambda: {"sample": 0.0, "score": 0.0, "learn": 0.0, "sync": 0.0})


def start_adapter(recipe: Recipe, sft_phase: dict | None = None) -> Path | None:
    """The adapter training starts from (None: a fresh one): train.on_policy.start_from as the schema resolved it, or
    for `sft` the adapter of the SFT phase this run trained first."""
    start = recipe.train.on_policy.start_from
    if start == "base":
        return None
    if start == "sft":
        if sft_phase is None:
            raise UserError("train.on_policy.start_from: sft needs the SFT phase (the train stage trains it first)")
        return Path(sft_phase["adapter"])
    return Path(start)


def trained_text(row: dict, source: str) -> dict:
    """A kept row the student was trained on, as trained_rows.parquet records it for evaluation's leak check."""
    return {C.ID: row[C.ID], C.INPUT: row[C.INPUT], C.COMPLETION: row[C.COMPLETION], "source": source, C.KEPT: True}


def seed_items(pool: list[dict], seed: int) -> list[dict]:
    """The seed prompts, once each, in an order drawn with `seed`: a file sorted by input (or by class) would otherwise
    give the last steps only its last kind of prompt."""
    seen, items = set(), []
    for item in pool:
        if item[C.INPUT] not in seen:
            seen.add(item[C.INPUT])
            items.append(item)
    random.Random(row_seed(seed, "on-policy order")).shuffle(items)
    return items


class OnPolicyLoop:
    def __init__(self, recipe: Recipe, run: RunDir, kept: list[dict], sft_phase: dict | None = None):
        self.recipe, self.run, self.t, self.o = recipe, run, recipe.train, recipe.train.on_policy
        self.kept, self.sft_phase = kept, sft_phase
        self.stage_dir = run.stage("train")
        self.adapters = self.stage_dir / "on_policy" / "adapters"
        self.checkpoints = self.stage_dir / "checkpoints"
        self.cost, self.history = Cost(), []
        # every text the student was trained on, for evaluation's leak check: the SFT phase's rows first
        self.trained: list[dict] = [trained_text(r, "kept row (sft phase)") for r in (sft_phase or {}).get("rows", [])]
        self.pool = seed_pool(run)  # as generation and evaluation draw the teacher's few-shot examples from it
        if not self.pool:
            raise UserError(f"{run.seeds}: no seeds; run the generate stage first")
        self.items = seed_items(self.pool, recipe.train.seed)
        self.repair_items, self.repair_left_out = repair_prompts(recipe, run) if self.o.repair else ([], 0)

    # ------------------------------------------------------------------ set-up

    def _models(self):
        import torch
        from peft import PeftModel, get_peft_model
        from transformers import set_seed

        from distill.models.device import torch_device
        from distill.train.student import load_student, lora_config

        self.student_dir, self.student_identity = resolved_model(self.recipe, "student")
        self.device = torch_device()
        base, self.tokenizer = load_student(self.recipe, self.student_dir)
        base = base.to(self.device)
        start = start_adapter(self.recipe, self.sft_phase)
        set_seed(self.t.seed)  # the adapter's initial weights (as the trainer seeds them): a resumed run is the same run
        if start is not None:
            self.model = PeftModel.from_pretrained(base, str(start), is_trainable=True)
        else:
            self.model = get_peft_model(base, lora_config(self.recipe))
        self.rank = self.model.peft_config["default"].r
        self.student_stop = student_stop_id(self.recipe, self.tokenizer)  # in the chat format, its end-of-turn token
        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=self.t.learning_rate)
        self.start = start

    def _engines(self):
        from distill.models.vllm_engine import VLLMEngine

        teacher_dir, _ = resolved_model(self.recipe, "teacher")
        # The teacher first: a server that would score wrong is refused before the student's engine starts.
        # vLLM 0.32's CPU build cannot return batched prompt log-probabilities from an engine with LoRA once it has
        # generated: the teacher scores on an engine of its own, without LoRA and without prefix caching (or through
        # the teacher's server: generate.backend openai, or the run's slurm.teacher_server job).
        self.scorer = teacher_engine(self.recipe, self.run, teacher_dir, stage="train", seed=self.t.seed,
                                     max_logprobs=self.o.top_k, reads_prompt_logprobs=True)
        # Its log-probabilities as it sampled them: after temperature (processed), which the learner reproduces.
        self.sampler = VLLMEngine(self.student_dir, self.recipe.models.student, seed=self.t.seed, role="student",
                                  max_lora_rank=self.rank, logprobs_mode="processed_logprobs")
        self.teacher_scored_by = self.scorer.describe()
        # The teacher's own stops; where the student's stop is not among them (a chat student's end-of-turn token),
        # the teacher is asked for its stop in that place, and its stops' probability is read as the student's.
        self.teacher_stops = stop_token_ids(teacher_dir, self.recipe.models.teacher.trust_remote_code)
        self.repair_scorer = None
        if self.o.repair:
            folder = repair_teacher_folder(self.recipe, self.student_dir, self.stage_dir / "on_policy" / "repair-teacher")
            self.repair_scorer = VLLMEngine(folder, self.recipe.models.student, seed=self.t.seed, role="student",
                                            reads_prompt_logprobs=True, max_logprobs=self.o.top_k)

    # ------------------------------------------------------------------ one step

    def _batch(self, step: int) -> list[tuple[str, dict]]:
        """The step's prompts as (kind, item): the seeds in order and cycling, and with repair on, its share of the
        repair prompts, cycling on their own."""
        per_step = self.o.prompts_per_step
        repairs = max(1, round(per_step * self.o.repair.share)) if self.o.repair else 0
        tasks = per_step - repairs
        batch = [(TASK, self.items[(step * tasks + i) % len(self.items)]) for i in range(tasks)]
        n = len(self.repair_items)
        return batch + [(REPAIR, self.repair_items[(step * repairs + i) % n]) for i in range(repairs)]

    def _sample(self, step: int, batch: list[tuple[str, dict]], adapter: Path):
        templates = {TASK: PromptTemplate(self.t.prompt_template, "train.prompt_template")}
        if self.o.repair:
            templates[REPAIR] = PromptTemplate(self.o.repair.prompt_template, "train.on_policy.repair.prompt_template")
        prompts = [student_prompt(self.recipe, templates[kind], item, self.tokenizer) for kind, item in batch]
        seeds = [row_seed(self.t.seed, f"on-policy:{step}:{item[C.ID]}") for _, item in batch]
        out = self.sampler.generate(prompts, seeds=seeds, n=self.o.samples_per_prompt, temperature=self.o.temperature,
                                    max_tokens=self.o.max_tokens, stop=list(self.recipe.evaluate.stop) or None,
                                    stop_token_ids=[self.student_stop] if self.student_stop is not None else None,
                                    adapter=adapter, adapter_name="student", logprobs=1)
        samples = []
        for (kind, item), prompt, completions in zip(batch, prompts, out):
            for c in completions:
                if c.capture is not None and c.capture.token_ids:
                    samples.append({"kind": kind, "item": item, "prompt": prompt, "ids": c.capture.token_ids,
                                    "sampler_logprobs": c.capture.sampled_logprobs, "finish_reason": c.finish_reason})
        return samples

    def _score(self, samples: list[dict]) -> None:
        """The teacher scores the seeds' answers on its own prompt; the repair teacher scores the repair answers on the
        prompt the student had."""
        task = [s for s in samples if s["kind"] == TASK]
        if task:
            template = PromptTemplate(self.recipe.generate.template, "generate.template")
            prompts = teacher_prompts(self.recipe, template, [s["item"] for s in task], self.pool,
                                      self.scorer.apply_chat_template, never_itself=True)
            stops, eos = self.teacher_stops, self.student_stop
            scored = self.scorer.score_ids(prompts, [teacher_reads(s["ids"], stops, eos) for s in task], self.o.top_k)
            for s, prompt, comp in zip(task, prompts, scored):
                s.update(teacher_prompt=prompt, teacher=capture_with_stops_as_eos(comp.capture, s["ids"], stops, eos))
        repair = [s for s in samples if s["kind"] == REPAIR]
        if repair:
            prompts = [s["prompt"] for s in repair]
            for s, prompt, comp in zip(repair, prompts,
                                       self.repair_scorer.score_ids(prompts, [s["ids"] for s in repair], self.o.top_k)):
                s.update(teacher_prompt=prompt, teacher=comp.capture)

    def _sequences(self, samples: list[dict]):
        """(input ids, attention mask, completion start and length per row), right-padded."""
        from distill.models.device import padded

        heads = [prompt_ids(self.tokenizer, s["prompt"]) for s in samples]
        seqs = [h + list(s["ids"]) for h, s in zip(heads, samples)]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids, mask = padded(seqs, pad, self.device)
        return ids, mask, [(len(h), len(s["ids"])) for h, s in zip(heads, samples)]

    def _on_policy_loss(self, samples: list[dict]) -> tuple:
        import torch

        from distill.divergence import topk_divergence

        ids, mask, spans = self._sequences(samples)
        logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
        pg_terms, fkl_terms, lag = [], [], 0.0
        rkl, tokens = {TASK: 0.0, REPAIR: 0.0}, {TASK: 0, REPAIR: 0}
        for row, ((start, n), s) in enumerate(zip(spans, samples)):
            # position j's logits predict token j + 1: the completion's tokens are predicted at start-1 .. start+n-2
            at = logits[row, start - 1:start - 1 + n]
            target = torch.tensor(s["ids"], device=at.device)
            # the distribution the sampler drew from (its processed log-probabilities): the importance ratio compares
            # like with like at any temperature
            new = torch.log_softmax(at / self.o.temperature, -1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
            old = torch.tensor(s["sampler_logprobs"], device=at.device)
            teacher = torch.tensor(s["teacher"].sampled_logprobs, device=at.device)
            reverse = old - teacher  # per token: log p_student - log p_teacher, on the student's own tokens
            advantage = -reverse
            pg_terms.append(-(torch.exp(new - old) * advantage).sum())
            if self.o.forward_kl_weight:
                t_ids = torch.tensor(s["teacher"].top_ids, device=at.device)
                t_lps = torch.tensor(s["teacher"].top_logprobs, device=at.device)
                fkl_terms.append(topk_divergence(at, t_ids, t_lps, "forward_kl", True).sum())
            rkl[s["kind"]] += reverse.sum().item()
            tokens[s["kind"]] += n
            self.trained.append({C.ID: f"{s['item'][C.ID]}:{len(self.history)}:{row}", C.INPUT: s["item"][C.INPUT],
                                 C.COMPLETION: self.tokenizer.decode(s["ids"], skip_special_tokens=True),
                                 "source": SOURCES[s["kind"]], C.KEPT: True})
            lag = max(lag, (new.detach() - old).abs().max().item())
        total = max(sum(tokens.values()), 1)
        pg = torch.stack(pg_terms).sum() / total
        fkl = torch.stack(fkl_terms).sum() / total if fkl_terms else torch.zeros((), device=pg.device)
        loss = self.o.reverse_kl_weight * pg + self.o.forward_kl_weight * fkl
        figures = {"reverse_kl": sum(rkl.values()) / total, "forward_kl": float(fkl), "policy_lag": lag,
                   "tokens": tokens[TASK], "repair_tokens": tokens[REPAIR] if self.o.repair else None}
        if self.o.repair:  # each kind's own gap: to the teacher on the seeds, to the repair teacher on the repair prompts
            figures["task_reverse_kl"] = rkl[TASK] / tokens[TASK] if tokens[TASK] else None
            figures["repair_reverse_kl"] = rkl[REPAIR] / tokens[REPAIR] if tokens[REPAIR] else None
        return loss, figures

    def _off_policy_loss(self, step: int) -> tuple:
        """Cross-entropy on kept rows' text (the teacher's answers), for the share of steps that are not on-policy."""
        import torch

        from distill.train.formats import training_examples

        rng = random.Random(row_seed(self.t.seed, f"off-policy:{step}"))
        rows = rng.sample(self.kept, min(self.o.prompts_per_step, len(self.kept)))
        examples = training_examples(self.recipe, rows)
        self.trained += [trained_text(r, "kept row") for r in rows]
        if self.t.chat:  # messages, as TRL takes them: the user turn through the chat template, the answer's text
            examples = [{"prompt": chat_prompt(self.tokenizer, e["prompt"][0]["content"]),
                         "completion": e["completion"][0]["content"]} for e in examples]
        tails = [continuation_ids(self.tokenizer, e["completion"]) + [self.student_stop] for e in examples]
        samples = [{"prompt": e["prompt"], "ids": t} for e, t in zip(examples, tails)]
        ids, mask, spans = self._sequences(samples)
        logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
        terms, tokens = [], 0
        for row, ((start, n), tail) in enumerate(zip(spans, tails)):
            at = logits[row, start - 1:start - 1 + n]
            terms.append(torch.nn.functional.cross_entropy(at, torch.tensor(tail, device=at.device), reduction="sum"))
            tokens += n
        loss = torch.stack(terms).sum() / max(tokens, 1)
        return loss, {"ce_loss": round(loss.item(), 6), "tokens": tokens}

    # ------------------------------------------------------------------ saving and resuming

    def _save_adapter(self, folder: Path) -> Path:
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self.model.save_pretrained(str(tmp))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
        return folder

    def _checkpoint(self, step: int) -> None:
        import torch

        folder = self.checkpoints / f"checkpoint-{step}"
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self.model.save_pretrained(str(tmp))
        torch.save(self.optimizer.state_dict(), tmp / OPTIMIZER)
        write_json(tmp / STATE, {"step": step, "cost": self.cost.__dict__, "history": self.history,
                                 "trained": self.trained})
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)

    def _resume(self) -> tuple[int, Path | None]:
        """(the step to start at, the adapter to sample with) from the last complete checkpoint, if any."""
        import torch
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        done = sorted((p for p in self.checkpoints.glob("checkpoint-*") if (p / STATE).is_file()),
                      key=lambda p: int(p.name.rpartition("-")[2])) if self.checkpoints.is_dir() else []
        if not done:
            return 0, None
        last = done[-1]
        set_peft_model_state_dict(self.model, load_file(str(last / "adapter_model.safetensors")))
        self.optimizer.load_state_dict(torch.load(last / OPTIMIZER, weights_only=True))
        state = json.loads((last / STATE).read_text())
        self.cost = Cost(**state["cost"])
        self.history, self.trained = state["history"], state["trained"]
        return state["step"], last

    # ------------------------------------------------------------------ the loop

    def train(self) -> dict:
        started = time.time()
        if process_count() > 1:
            raise UserError("train.objective on_policy trains in one process (its sampler and scorer are vLLM engines "
                            "beside it): ask slurm.train for one node and at most one GPU")
        self._models()
        step, resumed_from = self._resume()
        self._engines()
        adapter = resumed_from or self._save_adapter(self.adapters / f"step-{step}")
        self.model.train()
        bar = progress(self.o.steps, "train (on-policy)", unit="step", initial=step)
        try:
            while step < self.o.steps:
                on_policy = random.Random(row_seed(self.t.seed, f"lmbda:{step}")).random() < self.o.lmbda
                if on_policy:
                    t0 = time.time()
                    samples = self._sample(step, self._batch(step), adapter)
                    t1 = time.time()
                    self._score(samples)
                    t2 = time.time()
                    loss, figures = self._on_policy_loss(samples)
                    self.cost.student_tokens_sampled += figures["tokens"] + (figures["repair_tokens"] or 0)
                    self.cost.teacher_tokens_scored += figures["tokens"]
                    self.cost.repair_tokens_scored += figures["repair_tokens"] or 0
                    self.cost.on_policy_steps += 1
                    self.cost.seconds["sample"] += t1 - t0
                    self.cost.seconds["score"] += t2 - t1
                else:
                    t2 = time.time()
                    loss, figures = self._off_policy_loss(step)
                    self.cost.off_policy_steps += 1
                loss.backward()
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                step += 1
                self.cost.seconds["learn"] += time.time() - t2
                self.history.append({"step": step, "loss": round(loss.item(), 6), "on_policy": on_policy,
                                     **{k: v for k, v in figures.items() if v is not None}})
                if step % self.o.sync_every == 0 or step == self.o.steps:
                    t3 = time.time()
                    previous, adapter = adapter, self._save_adapter(self.adapters / f"step-{step}")
                    self.cost.adapter_reloads += 1
                    if previous.parent == self.adapters and previous != adapter:
                        shutil.rmtree(previous, ignore_errors=True)  # a sync folder, superseded (not a checkpoint)
                    self.cost.seconds["sync"] += time.time() - t3
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4g}", **({"rkl": f"{figures['reverse_kl']:.3f}"}
                                                              if "reverse_kl" in figures else {}))
                if (self.t.save_steps and step % self.t.save_steps == 0) or stop_requested():
                    self._checkpoint(step)
                    if stop_requested():
                        raise Preempted(f"train: stopped after on-policy step {step} with a checkpoint, as the "
                                        "scheduler asked; the next start resumes from it")
        finally:
            bar.close()
            self.sampler.close()
            self.scorer.close()
            if self.repair_scorer is not None:
                self.repair_scorer.close()
            shutil.rmtree(self.stage_dir / "on_policy" / "repair-teacher", ignore_errors=True)  # a merged copy, if any
        return self._finish(started, resumed_from is not None)

    def _finish(self, started: float, resumed: bool) -> dict:
        run = self.run
        tmp = self.stage_dir / "adapter.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        self.model.save_pretrained(str(tmp))
        self.tokenizer.save_pretrained(str(tmp))
        samples = self.stage_dir / "on_policy" / "trained_rows.parquet"
        write_parquet(samples, self.trained)
        write_json(tmp / "training_data.json", {
            "rows_file": str(samples), "rows_sha256": hash_file(samples), "rows_used": len(self.trained),
            "prompts": f"{len(self.items)} seeds ({run.seeds})",
            "base_model": self.student_identity, "recipe_name": self.recipe.name,
            "start_adapter": str(self.start) if self.start else None,
        })
        shutil.rmtree(run.adapter, ignore_errors=True)
        os.replace(tmp, run.adapter)
        shutil.rmtree(self.adapters, ignore_errors=True)  # sync folders: each a copy of a step's adapter
        steps = [h["step"] for h in self.history]
        losses = [h["loss"] for h in self.history]
        rkl = [h["reverse_kl"] for h in self.history if "reverse_kl" in h]
        cost = {**self.cost.__dict__, "seconds": {k: round(v, 1) for k, v in self.cost.seconds.items()}}
        write_json(self.stage_dir / "log.json", {"steps": steps, "losses": losses, "history": self.history, "cost": cost})
        if steps:
            from distill.train.plots import plot_loss

            plot_loss(steps, losses, self.stage_dir / "loss.png",
                      f"{self.recipe.name}: on-policy, LoRA r={self.rank}, {self.o.prompts_per_step} prompts per step")
        return {"objective": "on_policy", **({"sft_phase": self.sft_phase["summary"]} if self.sft_phase else {}),
                "steps": len(self.history) and self.history[-1]["step"],
                "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
                "first_reverse_kl": round(rkl[0], 4) if rkl else None, "last_reverse_kl": round(rkl[-1], 4) if rkl else None,
                "cost": cost, "teacher_scored_by": self.teacher_scored_by, "resumed": resumed,
                "seconds": round(time.time() - started, 1), **self._repair_summary()}

    def _repair_summary(self) -> dict:
        if not self.o.repair:
            return {}
        r = self.o.repair
        kl = [h["repair_reverse_kl"] for h in self.history if h.get("repair_reverse_kl") is not None]
        return {"repair": {"teacher": r.teacher, "prompts": len(self.repair_items), "share": r.share,
                           "left_out_as_evaluation_items": self.repair_left_out,
                           "first_reverse_kl": round(kl[0], 4) if kl else None,
                           "last_reverse_kl": round(kl[-1], 4) if kl else None}}
