"""train: LoRA on the student with TRL's SFTTrainer, loss on the completion only.

Runs unchanged under `accelerate launch` (one process per device); only the main process
writes files. The adapter is saved beside a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq

from distill import rows as C
from distill.data.split import sample_in_order
from distill.errors import UserError
from distill.models.context import resolved_model
from distill.models.device import process_count
from distill.models.dtype import model_dtype
from distill.preemption import Preempted, stop_may_be_requested, stop_requested
from distill.progress import console, progress
from distill.prompts.student import check_eval_agreement, student_stop_id
from distill.recipe import Recipe
from distill.run_dir import RunDir, hash_file, write_json
from distill.tracking import finish_tracking, trainer_callbacks
from distill.train.formats import check_stop_learned
from distill.train.objectives import objective_for
from distill.train.plots import plot_loss, plot_loss_terms
from distill.train.student import check_method, load_student, lora_config


def distill_trainer_settings(recipe: Recipe, output_dir: Path) -> dict:
    """The SFTConfig settings distill sets from the recipe (and the machine): every key here is one that
    train.trainer_args refuses (distill.recipe.train.TRAINER_ARGS_SET_BY_DISTILL)."""
    from distill.models.device import torch_device

    t, spec = recipe.train, recipe.models.student
    on_gpu = torch_device().type == "cuda"
    dtype = model_dtype(spec, "student").dtype
    return {
        **objective_for(recipe).config_fields(),
        "output_dir": str(output_dir),
        "num_train_epochs": t.epochs,
        "per_device_train_batch_size": t.batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "learning_rate": t.learning_rate,
        "lr_scheduler_type": t.lr_scheduler,
        "warmup_steps": t.warmup_steps,
        "weight_decay": t.weight_decay,
        "max_grad_norm": t.max_grad_norm,
        "max_length": t.max_length,
        "completion_only_loss": True,
        "gradient_checkpointing": t.gradient_checkpointing,
        "packing": t.packing,
        # best-fit packing keeps every row whole and apart (its own positions, no attention across rows), so each
        # still learns its EOS; "wrapped" would cut rows mid-answer
        **({"packing_strategy": "bfd"} if t.packing else {}),
        "logging_steps": t.logging_steps,
        "save_strategy": "steps" if t.save_steps else "no",
        "save_steps": t.save_steps or 500,
        "seed": t.seed,
        "data_seed": t.seed,
        "use_cpu": not on_gpu,
        "bf16": on_gpu and dtype == "bfloat16",
        "report_to": "none",
        "dataloader_num_workers": 0,
        "disable_tqdm": True,  # distill's own bar (loss_bar) instead; the per-step dict is printed to the log
    }


def training_arguments(recipe: Recipe, output_dir: Path):
    """TRL's SFTConfig for the recipe: distill's settings, then train.trainer_args as given. Made before the model
    loads: under `accelerate launch` with DeepSpeed ZeRO-3 it registers the DeepSpeed config, so that transformers
    partitions the weights as it loads them instead of loading a full copy in every process."""
    passed = recipe.train.trainer_args
    try:
        return objective_for(recipe).config_class()(**distill_trainer_settings(recipe, output_dir), **passed)
    except (ValueError, TypeError) as e:
        if not passed:
            raise
        raise UserError(f"train.trainer_args ({', '.join(passed)}): TRL refused the settings: {_one_line(e)}") from None


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def build_trainer(recipe: Recipe, student_dir: Path, examples: list[dict], output_dir: Path):
    """(the objective's trainer for these examples, the student's tokenizer), as training uses them: an adapter on
    the base (method lora; qlora on its 4-bit weights) or every weight (full)."""
    from datasets import Dataset

    config = training_arguments(recipe, output_dir)  # before the model: see training_arguments
    model, tokenizer = load_student(recipe, student_dir)
    peft_config = lora_config(recipe)
    if recipe.train.init_adapter:  # continue that adapter's weights (and its LoRA settings) instead of a fresh one
        from peft import PeftModel

        model, peft_config = PeftModel.from_pretrained(model, recipe.train.init_adapter, is_trainable=True), None
        if recipe.train.gradient_checkpointing:  # TRL prepares a model it wraps itself; this one is wrapped here
            model.enable_input_require_grads()
    trainer_class = objective_for(recipe).trainer_class()
    try:
        trainer = trainer_class(model=model, args=config, train_dataset=Dataset.from_list(examples),
                                processing_class=tokenizer, peft_config=peft_config)
    except ValueError as e:
        if "target modules" in str(e).lower() or "target_modules" in str(e):
            raise UserError(f"train.lora.target_modules: {_one_line(e)}") from None
        if recipe.train.trainer_args:
            raise UserError(f"train.trainer_args ({', '.join(recipe.train.trainer_args)}): TRL refused the trainer: "
                            f"{_one_line(e)}") from None
        raise
    return trainer, tokenizer


def examples_as_trained(trainer):
    """What the EOS check reads: the trainer itself, or with packing its examples unpacked. A pack is several
    examples end to end (`seq_lengths` says where each ends); the trainer gives each its own positions, so attention
    and the loss stay within an example, and the collator masks only each example's first label (a prompt token, never
    learned), so every example must still end with its EOS label. A row cut by max_length is cut before packing."""
    if not trainer.args.packing:
        return trainer
    from types import SimpleNamespace

    from datasets import Dataset
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    packs = trainer.train_dataset
    ids, labels = [], []
    for pack_ids, pack_labels, lengths in zip(packs["input_ids"], packs["labels"], packs["seq_lengths"]):
        start = 0
        for n in lengths:
            ids.append(pack_ids[start:start + n])
            labels.append(pack_labels[start:start + n])
            start += n
    collator = DataCollatorForLanguageModeling(pad_token_id=trainer.processing_class.pad_token_id)
    return SimpleNamespace(train_dataset=Dataset.from_dict({"input_ids": ids, "labels": labels}), data_collator=collator)


def loss_bar():
    """A trainer callback drawing one progress bar over the optimizer steps, with the last logged loss."""
    from transformers import TrainerCallback

    class LossBar(TrainerCallback):
        bar = None

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.bar = progress(state.max_steps, "train", unit="step")

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)  # a resumed run starts at its checkpoint's step

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.bar is not None and logs and "loss" in logs:
                self.bar.set_postfix(loss=f"{float(logs['loss']):.4g}")

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return LossBar()


def stop_on_request():
    """A trainer callback that ends training after the optimizer step in hand, saving a checkpoint, when the
    scheduler asks (distill.preemption). Every process decides at the same step, or the others would wait forever
    in the next collective."""
    from transformers import TrainerCallback

    class StopOnRequest(TrainerCallback):
        stopped = False

        def on_step_end(self, args, state, control, **kwargs):
            if _all_agree_any(stop_requested(), args.device):
                control.should_save = control.should_training_stop = True
                self.stopped = True

    return StopOnRequest()


def _all_agree_any(flag: bool, device) -> bool:
    """True on every process when it is true on any (one all-reduce of one number per step)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


# Trainers of a multi-process launch, held until the process ends without teardown (cli._exit_without_teardown): the
# DDP reducer's gloo process group joins threads in its destructor that wait for processes that have already exited,
# so a trainer freed when run_train returns can hang its process after the work is done.
_HELD_UNTIL_EXIT: list = []


def run_train(recipe: Recipe, run: RunDir) -> dict:
    started = time.time()
    check_method(recipe)  # before any work; load_student checks it again for whoever loads the student directly
    check_eval_agreement(recipe)
    objective = objective_for(recipe)
    objective.check()
    kept = [r for path in (*recipe.train.add_rows, run.filtered) for r in pq.read_table(path).to_pylist() if r[C.KEPT]]
    if not kept:
        raise UserError(f"no kept rows to train on in {run.filtered}")
    if objective.own_loop:  # offered the recipe's SFT on the kept rows, to run first if it composes one
        summary = objective.train(run, kept, sft=lambda: sft_phase(recipe, run, kept))
        finish_tracking(recipe)
        return summary
    summary = train_with_trainer(recipe, run, kept, run.stage("train"), run.adapter, started)
    if summary:
        finish_tracking(recipe)
    return summary


SFT_PHASE = "sft"  # train/sft/: the SFT phase of train.on_policy.start_from: sft, its adapter and checkpoints


def sft_phase(recipe: Recipe, run: RunDir, kept: list[dict]) -> dict:
    """train.on_policy.start_from: sft: the recipe's SFT on the kept rows (the same trainer, settings and checkpoints
    as objective sft) into train/sft/adapter, before the on-policy loop starts from it. A finished phase is kept: a
    stopped run resumes in the loop, not from the first SFT step. Returns the phase's summary, its adapter and the
    rows it trained on."""
    folder = run.stage("train") / SFT_PHASE
    adapter, record = folder / "adapter", folder / "summary.json"
    if not (record.is_file() and (adapter / "adapter_config.json").is_file()):
        sft = recipe.model_copy(update={"train": recipe.train.model_copy(update={"objective": "sft"})})
        summary = train_with_trainer(sft, run, kept, folder, adapter, time.time())
        write_json(record, summary)
    t = recipe.train
    rows = sample_in_order(kept, t.max_rows, t.seed)
    return {"summary": json.loads(record.read_text()), "adapter": adapter, "rows": rows}


def train_with_trainer(recipe: Recipe, run: RunDir, kept: list[dict], stage_dir: Path, adapter: Path,
                       started: float) -> dict:
    """The objective's TRL trainer on the kept rows: checkpoints in stage_dir/checkpoints (a stopped run resumes from
    the last), the adapter to `adapter`, the loss log and plots in stage_dir. Returns the summary ({} in a process
    other than the main one)."""
    t = recipe.train
    objective = objective_for(recipe)
    student_dir, student = resolved_model(recipe, "student")
    examples, rows, teacher_targets = objective.examples(sample_in_order(kept, t.max_rows, t.seed), student_dir, run)

    checkpoints = stage_dir / "checkpoints"
    trainer, tokenizer = build_trainer(recipe, student_dir, examples, checkpoints)
    if process_count() > 1:
        _HELD_UNTIL_EXIT.append(trainer)
    format_check = check_stop_learned(examples_as_trained(trainer), tokenizer, recipe.evaluate.stop, len(examples),
                                      t.max_length, t.max_truncated_share, student_stop_id(recipe, tokenizer))
    lost = format_check["rows_without_eos"] + format_check["rows_dropped_by_max_length"]
    if lost and trainer.is_world_process_zero():
        console(f"[train] warning: {lost} of {len(examples)} training rows lose their EOS label to train.max_length = "
                f"{t.max_length} ({format_check['rows_dropped_by_max_length']} of them dropped)")

    trainer.data_collator = objective.collator(trainer.data_collator)

    resume = any(checkpoints.glob("checkpoint-*")) if checkpoints.is_dir() else False
    trainer.add_callback(loss_bar())
    stopper = stop_on_request() if stop_may_be_requested() else None
    if stopper is not None:
        trainer.add_callback(stopper)
    if trainer.is_world_process_zero():
        for callback in trainer_callbacks(recipe, run):
            trainer.add_callback(callback)
    result = trainer.train(resume_from_checkpoint=True if resume else None)
    if stopper is not None and stopper.stopped:
        _leave_process_group(trainer)
        raise Preempted(f"train: stopped after step {trainer.state.global_step} with a checkpoint, as the scheduler "
                        f"asked; the next start resumes from it")
    try:
        if not trainer.is_world_process_zero():
            return {}
        return _save_adapter(recipe, run, student, trainer, tokenizer, rows, len(kept), result, resume, format_check,
                             started, teacher_targets, stage_dir, adapter)
    finally:
        _leave_process_group(trainer)


def _leave_process_group(trainer) -> None:
    """Every process waits for the main one to save, then leaves the process group: a process
    that exits with the gloo group still open can abort in its teardown."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        trainer.accelerator.wait_for_everyone()
        dist.destroy_process_group()


def method_title(recipe: Recipe) -> str:
    t = recipe.train
    return {"lora": f"LoRA r={t.lora.r}", "qlora": f"QLoRA r={t.lora.r} (4-bit base)", "full": "full fine-tuning"}[t.method]


def parameter_counts(model) -> tuple[int, int]:
    """(parameters the optimizer trained, all parameters): an adapter's share of the model, or all of it (full).
    PEFT counts a 4-bit weight by the parameters it stands for, not by its packed bytes."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return tuple(int(n) for n in model.get_nb_trainable_parameters())
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def _save_adapter(recipe: Recipe, run: RunDir, student: str, trainer, tokenizer, rows: list[dict], kept: int, result,
                  resume: bool, format_check: dict, started: float, teacher_targets: dict | None, stage_dir: Path,
                  adapter: Path) -> dict:
    t = recipe.train
    history = [h for h in trainer.state.log_history if "loss" in h]
    steps, losses = [h["step"] for h in history], [float(h["loss"]) for h in history]
    tmp = adapter.with_name(adapter.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    # lora, qlora: adapter_config.json + adapter_model.safetensors; full: the whole model (config.json, weights)
    trainer.save_model(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    # The adapter (or model) carries what it was trained on: which rows (by id, when not every kept row) and which model.
    write_json(tmp / "training_data.json", {
        "rows_file": str(run.filtered), "rows_sha256": hash_file(run.filtered), "rows_used": len(rows),
        **({"row_ids": [r[C.ID] for r in rows]} if len(rows) < kept else {}),
        "base_model": student, "recipe_name": recipe.name,
        **({"continued_from": recipe.train.init_adapter} if recipe.train.init_adapter else {}),
        **({"added_rows": [{"rows_file": f, "rows_sha256": hash_file(f)} for f in recipe.train.add_rows]}
           if recipe.train.add_rows else {}),
    })
    shutil.rmtree(adapter, ignore_errors=True)
    os.replace(tmp, adapter)
    objective = objective_for(recipe)
    terms = {name: [float(h[name]) for h in history] for name in objective.loss_terms
             if history and all(name in h for h in history)}
    write_json(stage_dir / "log.json", {"steps": steps, "losses": losses, **{f"{n}es": v for n, v in terms.items()},
                                        "log_history": trainer.state.log_history})
    if steps:
        plot_loss(steps, losses, stage_dir / "loss.png", f"{recipe.name}: {method_title(recipe)} on {len(rows)} rows")
        if terms:
            plot_loss_terms(steps, terms, stage_dir / "loss_terms.png",
                            f"{recipe.name}: {t.objective}, {t.kd.divergence}, per token")
    trained, total = parameter_counts(trainer.model)
    return {**objective.summary(teacher_targets, terms), "method": t.method,
        "parameters_trained": trained, "parameters": total,
        "rows": len(rows), **({"rows_kept": kept} if len(rows) < kept else {}), "steps": trainer.state.global_step,
        "processes": trainer.accelerator.num_processes,
        "global_batch": t.batch_size * t.gradient_accumulation_steps * trainer.accelerator.num_processes,
        "first_loss": round(losses[0], 4) if losses else None,
        "last_loss": round(losses[-1], 4) if losses else None, "train_seconds": round(result.metrics.get("train_runtime", 0), 1),
        "resumed": resume, "format_check": format_check, "seconds": round(time.time() - started, 1),
    }
