"""On-policy distillation's loop: the student samples, the teacher scores its tokens, the student learns from the
difference; step, sync, checkpoint and resume.

Each step:
1. rollouts (distill.train.rollout): the student's vLLM engine answers the step's seed prompts with the current
   adapter, loaded as a LoRA request of its own (vLLM caches adapters by id: an id reused for a new folder would serve
   the old weights); the teacher's engine (no LoRA, no prefix caching) reads exactly those token ids after its own
   prompt for the same seed, teacher-forced. A step drawn off-policy (lmbda < 1) takes kept rows' text instead;
2. learn (distill.policy_loss): a forward pass of the trained student over its prompt and the same tokens; the
   per-token reverse KL is the advantage of an importance-weighted policy gradient, plus the weighted forward KL over
   the teacher's top K; then one AdamW step with the recipe's schedule, warm-up, weight decay and clipping;
3. sync: the new adapter is saved to a folder of its own and sampled from at the next step.
With train.on_policy.repair, part of each step's prompts are like a guard set's and an earlier model (the base student)
scores the student's answers to them: the same loss pulls the student back toward what task training broke
(distill.train.repair).
A checkpoint holds the adapter, the optimizer and its schedule, the step and the costs so far, so a killed run resumes
at the next step with the same prompts and seeds.
"""

from __future__ import annotations

import json
import math
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
from distill.preemption import Preempted, stop_requested
from distill.progress import progress
from distill.prompts.student import student_stop_id
from distill.prompts.template import row_seed
from distill.recipe import Recipe
from distill.run_dir import RunDir, hash_file, write_json, write_parquet
from distill.train import rollout as R
from distill.train.repair import repair_prompts, repair_teacher_folder
from distill.train.rollout import REPAIR, SOURCES, TASK, TEXT, Rollout

STATE = "on_policy_state.json"
OPTIMIZER = "optimizer.pt"


@dataclass
class Cost:
    """What the run spent, for the train log, the report and the model card."""

    student_tokens_sampled: int = 0
    teacher_tokens_scored: int = 0  # answer tokens the teacher read: the student's samples, and off-policy the rows'
    teacher_prompts_scored: int = 0  # answers it read, each after a prompt of its own
    teacher_prompt_tokens_read: int = 0  # the tokens of those prompts (few-shot examples included)
    repair_tokens_scored: int = 0  # scored by the repair teacher (train.on_policy.repair)
    repair_prompt_tokens_read: int = 0
    adapter_reloads: int = 0
    on_policy_steps: int = 0
    off_policy_steps: int = 0
    seconds: dict = field(default_factory=lambda: {"sample": 0.0, "score": 0.0, "learn": 0.0, "sync": 0.0})

    def add(self, rollouts: list[Rollout]) -> None:
        for r in rollouts:
            if r.sampled:
                self.student_tokens_sampled += len(r.ids)
            if r.kind == REPAIR:
                self.repair_tokens_scored += len(r.ids)
                self.repair_prompt_tokens_read += r.teacher_prompt_tokens
            else:
                self.teacher_tokens_scored += len(r.ids)
                self.teacher_prompts_scored += 1
                self.teacher_prompt_tokens_read += r.teacher_prompt_tokens


def warmup_steps(warmup: float, steps: int) -> int:
    """train.warmup_steps as transformers resolves it: a whole number of steps, or a share of all steps below 1."""
    return int(warmup) if warmup >= 1 else math.ceil(steps * warmup)


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
        self._optimizer()
        self.start = start

    def _optimizer(self):
        """AdamW with the recipe's learning rate, schedule, warm-up, weight decay and clipping, over the on-policy
        steps (TRL's defaults where the recipe is silent): what `optimizer` in the summary and the card name."""
        import torch
        from transformers import get_scheduler

        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=self.t.learning_rate, weight_decay=self.t.weight_decay)
        self.warmup = warmup_steps(self.t.warmup_steps, self.o.steps)
        self.scheduler = get_scheduler(self.t.lr_scheduler, self.optimizer, num_warmup_steps=self.warmup,
                                       num_training_steps=self.o.steps)

    def optimizer_settings(self) -> dict:
        return {"name": "AdamW", "learning_rate": self.t.learning_rate, "lr_scheduler": self.t.lr_scheduler,
                "warmup_steps": self.warmup, "weight_decay": self.t.weight_decay, "max_grad_norm": self.t.max_grad_norm,
                "steps": self.o.steps, "prompts_per_step": self.o.prompts_per_step,
                "samples_per_prompt": self.o.samples_per_prompt}

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
        self.teacher_stops = self.scorer.stop_ids
        self.repair_scorer = None
        if self.o.repair:
            folder = repair_teacher_folder(self.recipe, self.student_dir, self.stage_dir / "on_policy" / "repair-teacher")
            self.repair_scorer = VLLMEngine(folder, self.recipe.models.student, seed=self.t.seed, role="student",
                                            reads_prompt_logprobs=True, max_logprobs=self.o.top_k)
        self.scorers = R.Scorers(self.scorer, self.teacher_stops, self.student_stop, self.o.top_k, self.repair_scorer)

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

    def _sample(self, step: int, batch: list[tuple[str, dict]], adapter: Path) -> list[Rollout]:
        return R.sample(self.recipe, self.sampler, self.tokenizer, batch, step, adapter, self.student_stop)

    def _text(self, step: int) -> list[Rollout]:
        """An off-policy step's rollouts: kept rows (the teacher's answers), drawn with train.seed and the step."""
        rng = random.Random(row_seed(self.t.seed, f"off-policy:{step}"))
        rows = rng.sample(self.kept, min(self.o.prompts_per_step, len(self.kept)))
        return R.text_rollouts(self.recipe, self.tokenizer, rows, self.student_stop)

    def _score(self, rollouts: list[Rollout]) -> None:
        R.score(self.recipe, rollouts, self.scorers, self.pool, self.scorer.apply_chat_template)

    def _sequences(self, rollouts: list[Rollout]):
        """(input ids, attention mask, completion start and length per row), right-padded."""
        from distill.models.device import padded
        from distill.prompts.tokens import prompt_ids

        heads = [prompt_ids(self.tokenizer, r.prompt) for r in rollouts]
        seqs = [h + list(r.ids) for h, r in zip(heads, rollouts)]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids, mask = padded(seqs, pad, self.device)
        return ids, mask, [(len(h), len(r.ids)) for h, r in zip(heads, rollouts)]

    def _loss(self, rollouts: list[Rollout]) -> tuple:
        """The step's loss per answer token and its figures. Sampled answers: the policy gradient on the reverse KL
        plus the weighted forward KL; kept rows' text: both as divergences over the teacher's top K
        (distill.policy_loss)."""
        import torch

        from distill.divergence import topk_divergence
        from distill.policy_loss import off_policy_divergence, policy_gradient

        ids, mask, spans = self._sequences(rollouts)
        logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
        terms, fkl_terms, lag = [], [], 0.0
        rkl, tokens = {TASK: 0.0, REPAIR: 0.0}, {TASK: 0, REPAIR: 0, TEXT: 0}
        for row, ((start, n), r) in enumerate(zip(spans, rollouts)):
            # position j's logits predict token j + 1: the completion's tokens are predicted at start-1 .. start+n-2
            at = logits[row, start - 1:start - 1 + n]
            t_ids = torch.tensor(r.teacher.top_ids, device=at.device)
            t_lps = torch.tensor(r.teacher.top_logprobs, device=at.device)
            if r.sampled:
                target = torch.tensor(r.ids, device=at.device)
                # the distribution the sampler drew from (its processed log-probabilities): the importance ratio
                # compares like with like at any temperature
                new = torch.log_softmax(at / self.o.temperature, -1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
                old = torch.tensor(r.sampler_logprobs, device=at.device)
                surrogate, reverse = policy_gradient(new, old, torch.tensor(r.teacher.sampled_logprobs, device=at.device))
                terms.append(self.o.reverse_kl_weight * surrogate)
                if self.o.forward_kl_weight:
                    fkl = topk_divergence(at, t_ids, t_lps, "forward_kl", True).sum()
                    fkl_terms.append(fkl.detach())
                    terms.append(self.o.forward_kl_weight * fkl)
                rkl[r.kind] += reverse.sum().item()
                lag = max(lag, (new.detach() - old).abs().max().item())
            else:
                terms.append(off_policy_divergence(at, t_ids, t_lps, self.o.reverse_kl_weight, self.o.forward_kl_weight))
            tokens[r.kind] += n
            self.trained.append(trained_text(r.item, SOURCES[r.kind]) if not r.sampled else
                                {C.ID: f"{r.item[C.ID]}:{len(self.history)}:{row}", C.INPUT: r.item[C.INPUT],
                                 C.COMPLETION: self.tokenizer.decode(r.ids, skip_special_tokens=True),
                                 "source": SOURCES[r.kind], C.KEPT: True})
        total = max(sum(tokens.values()), 1)
        loss = torch.stack(terms).sum() / total
        if tokens[TEXT]:
            return loss, {"divergence": round(loss.item(), 6), "tokens": tokens[TEXT]}
        figures = {"reverse_kl": sum(rkl.values()) / total, "policy_lag": lag, "tokens": tokens[TASK],
                   "forward_kl": float(torch.stack(fkl_terms).sum() / total) if fkl_terms else 0.0,
                   "repair_tokens": tokens[REPAIR] if self.o.repair else None}
        if self.o.repair:  # each kind's own gap: to the teacher on the seeds, to the repair teacher on the repair prompts
            figures["task_reverse_kl"] = rkl[TASK] / tokens[TASK] if tokens[TASK] else None
            figures["repair_reverse_kl"] = rkl[REPAIR] / tokens[REPAIR] if tokens[REPAIR] else None
        return loss, figures

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
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}, tmp / OPTIMIZER)
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
        saved = torch.load(last / OPTIMIZER, weights_only=True)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        state = json.loads((last / STATE).read_text())
        self.cost = Cost(**state["cost"])
        self.history, self.trained = state["history"], state["trained"]
        return state["step"], last

    # ------------------------------------------------------------------ the loop

    def train(self) -> dict:
        import torch

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
                t0 = time.time()
                rollouts = self._sample(step, self._batch(step), adapter) if on_policy else self._text(step)
                t1 = time.time()
                self._score(rollouts)
                t2 = time.time()
                loss, figures = self._loss(rollouts)
                self.cost.add(rollouts)
                self.cost.seconds["sample"] += t1 - t0
                self.cost.seconds["score"] += t2 - t1
                if on_policy:
                    self.cost.on_policy_steps += 1
                else:
                    self.cost.off_policy_steps += 1
                loss.backward()
                if self.t.max_grad_norm:
                    figures["grad_norm"] = round(float(torch.nn.utils.clip_grad_norm_(self.params, self.t.max_grad_norm)), 6)
                figures["learning_rate"] = self.scheduler.get_last_lr()[0]
                self.optimizer.step()
                self.scheduler.step()
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
        # two curves: the policy-gradient surrogate of on-policy steps and the divergence of off-policy ones differ in
        # kind and scale, and one line through both would mean neither
        on = [h for h in self.history if h["on_policy"]]
        off = [h for h in self.history if not h["on_policy"]]
        steps, losses = [h["step"] for h in on], [h["loss"] for h in on]
        rkl = [h["reverse_kl"] for h in on]
        cost = {**self.cost.__dict__, "seconds": {k: round(v, 1) for k, v in self.cost.seconds.items()}}
        write_json(self.stage_dir / "log.json", {
            "steps": steps, "losses": losses, "history": self.history, "cost": cost,
            "off_policy": {"steps": [h["step"] for h in off], "divergences": [h["divergence"] for h in off]}})
        curves = {name: ([h["step"] for h in part], [h["loss"] for h in part])
                  for name, part in (("on-policy loss (policy gradient)", on), ("off-policy divergence", off)) if part}
        if curves:
            from distill.train.plots import plot_series

            plot_series(curves, self.stage_dir / "loss.png",
                        f"{self.recipe.name}: on-policy, LoRA r={self.rank}, {self.o.prompts_per_step} prompts per step")
        seconds = time.time() - started
        phase_seconds = (self.sft_phase or {}).get("summary", {}).get("seconds") or 0.0
        return {"objective": "on_policy", **({"sft_phase": self.sft_phase["summary"]} if self.sft_phase else {}),
                "steps": len(self.history) and self.history[-1]["step"], "optimizer": self.optimizer_settings(),
                "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
                "first_reverse_kl": round(rkl[0], 4) if rkl else None, "last_reverse_kl": round(rkl[-1], 4) if rkl else None,
                **({"first_off_policy_divergence": off[0]["divergence"], "last_off_policy_divergence": off[-1]["divergence"]}
                   if off else {}),
                "cost": cost, "teacher_scored_by": self.teacher_scored_by, "resumed": resumed,
                # the SFT phase's time counts: the adapter cost both
                "seconds": round(seconds + phase_seconds, 1), "on_policy_seconds": round(seconds, 1),
                **self._repair_summary()}

    def _repair_summary(self) -> dict:
        if not self.o.repair:
            return {}
        r = self.o.repair
        kl = [h["repair_reverse_kl"] for h in self.history if h.get("repair_reverse_kl") is not None]
        return {"repair": {"teacher": r.teacher, "prompts": len(self.repair_items), "share": r.share,
                           "left_out_as_evaluation_items": self.repair_left_out,
                           "first_reverse_kl": round(kl[0], 4) if kl else None,
                           "last_reverse_kl": round(kl[-1], 4) if kl else None}}
