"""Benchmark: the quickstart, stage by stage, beside plain scripts doing each stage's core work.

Every contender is a fresh process timed from outside (start-up, imports and model loads
included, as a stage pays them). distill runs its stage commands one after another on one run
directory, evaluation without the cache. The plain scripts do the same work on the same inputs,
read from that run directory, with none of distill's bookkeeping:

- generate: one vLLM engine, the stage's own prompts and sampling settings;
- train: TRL's SFTTrainer with the same LoRA settings on the kept rows, rendered as the stage does;
- evaluate: one vLLM engine with LoRA for base and student and one for the teacher (in its own dtype) on the
  stage's own prompts, then reference NLL with a transformers forward pass per item and model (PEFT for the student).

    .venv/bin/python benchmarks/quickstart.py       # about 8 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "quickstart" / "recipe.yaml"
STAGES = ("generate", "filter", "train", "evaluate", "document")
PLAIN = {"generate": "plain vLLM script", "train": "plain TRL + PEFT script", "evaluate": "plain vLLM + transformers loop"}


def timed(cmd: list[str], env: dict) -> float:
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - started


sys.path.insert(0, str(ROOT))
from distill.models.dtype import model_dtype, torch_dtype  # noqa: E402  (this checkout's distill)
from distill.models.hardware import this_machine  # noqa: E402


def _recipe_and_run(run_dir: str):
    from distill.recipe import load_recipe
    from distill.run_dir import RunDir

    return load_recipe(str(RECIPE), [f"run_dir={run_dir}"]), RunDir(Path(run_dir))


def plain_generate(run_dir: str) -> None:
    import pyarrow.parquet as pq

    recipe, run = _recipe_and_run(run_dir)
    from distill.models.context import resolved_model
    from distill.models.vllm_engine import configure_cpu_environment

    folder, _ = resolved_model(recipe, "teacher")
    spec, s = recipe.models.teacher, recipe.generate.sampling
    configure_cpu_environment(spec)
    from vllm import LLM, SamplingParams

    prompts = pq.read_table(run.generated, columns=["prompt"]).column("prompt").to_pylist()
    # vLLM's own defaults beside the dtype distill chose for this machine (prefix caching on, vLLM's block size)
    llm = LLM(model=str(folder), dtype=model_dtype(spec, "teacher", folder).dtype, max_model_len=spec.engine.max_model_len, enforce_eager=True,
              seed=s.seed, kv_cache_memory_bytes=int(spec.engine.kv_cache_gb * 1024**3))
    params = [SamplingParams(temperature=s.temperature, max_tokens=s.max_tokens, stop=s.stop or None, seed=s.seed + i)
              for i in range(len(prompts))]
    llm.generate(prompts, params, use_tqdm=False)


def plain_train(run_dir: str) -> None:
    import pyarrow.parquet as pq
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    recipe, run = _recipe_and_run(run_dir)
    from distill.models.context import resolved_model
    from distill.train.formats import training_examples

    folder, _ = resolved_model(recipe, "student")
    t = recipe.train
    rows = [r for r in pq.read_table(run.filtered).to_pylist() if r["kept"]]
    with tempfile.TemporaryDirectory() as out:
        config = SFTConfig(output_dir=out, num_train_epochs=t.epochs, per_device_train_batch_size=t.batch_size,
                           learning_rate=t.learning_rate, lr_scheduler_type=t.lr_scheduler, max_length=t.max_length,
                           completion_only_loss=True, logging_steps=t.logging_steps, save_strategy="no", seed=t.seed,
                           use_cpu=True, report_to="none", disable_tqdm=True)
        lora = LoraConfig(r=t.lora.r, lora_alpha=t.lora.alpha, lora_dropout=t.lora.dropout,
                          target_modules=list(t.lora.target_modules), task_type="CAUSAL_LM")
        trainer = SFTTrainer(model=str(folder), args=config, train_dataset=Dataset.from_list(training_examples(recipe, rows)),
                             peft_config=lora)
        trainer.train()
        trainer.save_model(out)


def plain_evaluate(run_dir: str) -> None:
    import gc

    import pyarrow.parquet as pq
    import torch

    recipe, run = _recipe_and_run(run_dir)
    from distill.models.context import resolved_model
    from distill.models.vllm_engine import configure_cpu_environment

    table = pq.read_table(run.stage("evaluate") / "predictions.parquet").to_pylist()
    configure_cpu_environment(recipe.models.student)
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    params = SamplingParams(temperature=0.0, max_tokens=recipe.evaluate.max_tokens, stop=recipe.evaluate.stop or None)
    # base and student on one engine with LoRA; the teacher on an engine in its own dtype
    for role, models in (("student", ("base", "student")), ("teacher", ("teacher",))):
        folder, _ = resolved_model(recipe, role)
        spec = getattr(recipe.models, role)
        llm = LLM(model=str(folder), dtype=model_dtype(spec, role, folder).dtype, max_model_len=spec.engine.max_model_len, enforce_eager=True,
                  seed=0, kv_cache_memory_bytes=int(spec.engine.kv_cache_gb * 1024**3), enable_lora=role == "student",
                  max_lora_rank=recipe.train.lora.r, max_loras=1)
        for model in models:
            prompts = [r["prompt"] for r in table if r["model"] == model]
            lora = LoRARequest("student", 1, str(run.adapter)) if model == "student" else None
            llm.generate(prompts, params, lora_request=lora, use_tqdm=False)
        del llm
        gc.collect()

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    nll_sets = {s.name for s in recipe.evaluate.sets if "nll" in s.metrics}
    for model in ("base", "student", "teacher"):
        role = "teacher" if model == "teacher" else "student"
        folder, _ = resolved_model(recipe, role)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        dtype = torch_dtype(model_dtype(getattr(recipe.models, role), role, folder).dtype)
        lm = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
        if model == "student":
            lm = PeftModel.from_pretrained(lm, str(run.adapter)).eval()
        for r in (r for r in table if r["model"] == model and r["set"] in nll_sets):
            prompt = tokenizer(r["prompt"])["input_ids"]
            target = tokenizer(" " + r["reference"], add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prompt + target])
            labels = ids.clone()
            labels[0, :len(prompt)] = -100
            with torch.inference_mode():
                lm(input_ids=ids, labels=labels)


PARTS = {"generate": plain_generate, "train": plain_train, "evaluate": plain_evaluate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", nargs=2, metavar=("STAGE", "RUN_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        return PARTS[args.part[0]](args.part[1])
    machine = this_machine()
    print(f"machine: {machine.cpu}, {machine.cores} cores; CPU features: {machine.cpu_summary()}; "
          f"GPUs: {', '.join(g.name for g in machine.gpus) or 'none'}", flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    distill = [sys.executable, "-m", "distill.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = str(Path(tmp) / "run")
        rows = []
        for stage in STAGES:
            extra = ["--no-cache"] if stage == "evaluate" else []
            seconds = timed([*distill, stage, str(RECIPE), f"run_dir={run_dir}", *extra], env)
            plain = timed([sys.executable, __file__, "--part", stage, run_dir], env) if stage in PARTS else None
            rows.append((stage, seconds, plain))
            print(f"{stage:<9} distill {seconds:6.1f} s" + (f"   {PLAIN[stage]} {plain:6.1f} s" if plain else ""), flush=True)
        report = json.loads((Path(run_dir) / "evaluate" / "report.json").read_text())
    plural = report["sets"]["plural"]["models"]
    print(f"\nmachine: {machine.cpu}, {machine.cores} cores; CPU features: {machine.cpu_summary()}")
    print(f"student {plural['student']['score']:.3f}, teacher {plural['teacher']['score']:.3f} on the held-out plurals\n")
    print("| stage | distill (s) | plain script | plain (s) | distill / plain |\n|---|---:|---|---:|---:|")
    for stage, seconds, plain in rows:
        print(f"| {stage} | {seconds:.1f} | {PLAIN.get(stage, '-')} | " + (f"{plain:.1f} | {seconds / plain:.2f}x |" if plain else "- | - |"))
    total, plain_total = sum(s for _, s, _ in rows), sum(p for _, _, p in rows if p)
    core = sum(s for _, s, p in rows if p)
    print(f"| all stages | {total:.1f} | the three plain scripts | {plain_total:.1f} | {core / plain_total:.2f}x (same three stages) |")


if __name__ == "__main__":
    main()
