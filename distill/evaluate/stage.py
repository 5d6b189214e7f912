"""evaluate: score base student, trained student and teacher on the same held-out real items.

Never synthetic data: items come from the recipe's held-out split or separate real files.
"""

from __future__ import annotations

import time
import evaluate as hf_evaluate

from distill import rows as C
from distill.data.loaders import read_rows
from distill.data.split import row_id
from distill.evaluate.metrics import metric_path
from distill.evaluate.report import build_report, write_reports
from distill.generate.prompts import PromptTemplate
from distill.generate.stage import read_jsonl, teacher_prompts, write_parquet
from distill.models.context import resolved_model
from distill.recipe import EvalSet, Recipe
from distill.run_dir import RunDir
from distill.train.formats import check_eval_agreement, student_prompt


def load_items(recipe: Recipe, run: RunDir, s: EvalSet) -> list[dict]:
    if s.data == "heldout":
        items = read_jsonl(run.heldout)
    else:
        items = []
        for r in read_rows(s.path, s.format, required=(s.input_field, s.target_field)):
            target = r[s.target_field]
            refs = [str(t) for t in target] if isinstance(target, list) else [str(target)]
            items.append({C.ID: row_id(r[s.input_field]), C.INPUT: str(r[s.input_field]), C.REFERENCE: refs[0],
                          C.REFERENCES: refs, C.SLICE: str(r.get(s.slice_field)) if s.slice_field else None})
    return items[: s.limit] if s.limit else items


def _same_model(recipe: Recipe) -> bool:
    return recipe.models.teacher == recipe.models.student


def run_evaluate(recipe: Recipe, run: RunDir) -> dict:
    from distill.generate.vllm_engine import VLLMEngine

    started = time.time()
    e = recipe.evaluate
    check_eval_agreement(recipe)
    sets = {s.name: (s, load_items(recipe, run, s)) for s in e.sets}
    seeds = read_jsonl(run.seeds)
    metric = hf_evaluate.load(metric_path("exact_match"))
    predictions: list[dict] = []
    who = list(e.models)

    def score(model_name: str, engine: VLLMEngine, adapter=None) -> None:
        for name, (s, items) in sets.items():
            if model_name == "teacher":
                template = PromptTemplate(e.teacher_template or recipe.generate.template, "evaluate.teacher_template")
                prompts = teacher_prompts(recipe, template, items, seeds, engine.apply_chat_template)
            else:
                template = PromptTemplate(s.prompt_template or recipe.train.prompt_template, f"evaluate.sets.{name}.prompt_template")
                prompts = [student_prompt(recipe, template, item, engine.tokenizer) for item in items]
            t0 = time.time()
            outs = engine.generate(prompts, seeds=[recipe.seed] * len(prompts), max_tokens=e.max_tokens, stop=e.stop,
                                   adapter=adapter, adapter_name="student")
            texts = [o[0].text.strip() for o in outs]
            item_scores = metric.compute(predictions=texts, references=[it[C.REFERENCES] for it in items])["scores"]
            print(f"[evaluate] {model_name:8s} on {name}: exact_match={sum(item_scores) / len(item_scores):.3f} "
                  f"({len(items)} items, {time.time() - t0:.1f}s)", flush=True)
            for item, prompt, text, sc, o in zip(items, prompts, texts, item_scores, outs):
                predictions.append({"set": name, "model": model_name, "item_id": item[C.ID], C.INPUT: item[C.INPUT],
                                    C.REFERENCE: item[C.REFERENCE], C.SLICE: item[C.SLICE], C.PROMPT: prompt,
                                    "prediction": text, "finish_reason": o[0].finish_reason, "score": sc})

    student_dir, _ = resolved_model(recipe, "student")
    if {"base", "student"} & set(who) or ("teacher" in who and _same_model(recipe)):
        engine = VLLMEngine(student_dir, recipe.models.student, seed=recipe.seed,
                            max_lora_rank=recipe.train.lora.r if "student" in who else None)
        if "base" in who:
            score("base", engine)
        if "student" in who:
            score("student", engine, adapter=run.adapter)
        if "teacher" in who and _same_model(recipe):
            score("teacher", engine)
        engine.close()
    if "teacher" in who and not _same_model(recipe):
        teacher_dir, _ = resolved_model(recipe, "teacher")
        engine = VLLMEngine(teacher_dir, recipe.models.teacher, seed=recipe.seed)
        score("teacher", engine)
        engine.close()

    write_parquet(run.predictions, predictions)
    report = build_report(recipe, predictions)
    write_reports(run, report)
    report["seconds"] = round(time.time() - started, 1)
    return report
