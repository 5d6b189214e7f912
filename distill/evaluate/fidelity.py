"""Fidelity to the teacher: on the teacher's own answers to the evaluation items, how often each student-prompted model's
most likely next token is the teacher's (top-1 agreement), and the forward KL from the teacher's top-K distribution
(with a tail bucket for the rest of the vocabulary) per token, teacher-forced.

The teacher's answers and top-K come from its scoring pass (vLLM, `logprobs`); each student is read with a transformers
forward pass over its own prompt followed by the teacher's answer tokens, as a kd student is trained.
"""

from __future__ import annotations

import time

from distill import rows as C
from distill.evaluate.targets import fidelity_k
from distill.recipe import EvalSet, Recipe
from distill.run_dir import hash_json

# Bump when a change here changes a figure: cached fidelity results made before then are not reused.
FIDELITY_VERSION = 1
BATCH = 16


def item_fidelity(model, sequences: list[list[int]], starts: list[int], targets: list[dict], pad: int) -> list[dict]:
    """Per sequence (prompt + the teacher's tokens): tokens measured, the summed KL and the count of top-1 agreements."""
    import torch

    from distill.divergence import top1_agreement, topk_divergence
    from distill.models.device import padded

    ids, mask = padded(sequences, pad, model.device)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    out = []
    for row, (start, t) in enumerate(zip(starts, targets)):
        n = len(t["top_ids"])
        here = logits[row, start - 1:start - 1 + n].float()  # position j predicts token j + 1
        t_ids, t_lps = torch.tensor(t["top_ids"], device=here.device), torch.tensor(t["top_logprobs"], device=here.device)
        kl = topk_divergence(here, t_ids, t_lps, "forward_kl", tail=True)
        agree = top1_agreement(here, t_ids, t_lps)
        out.append({"tokens": n, "kl_sum": float(kl.sum()), "agree": int(agree.sum())})
    return out


def summarize(per_item: list[dict]) -> dict:
    tokens = sum(x["tokens"] for x in per_item)
    return {"top1_agreement": sum(x["agree"] for x in per_item) / tokens if tokens else None,
            "kl_per_token": sum(x["kl_sum"] for x in per_item) / tokens if tokens else None,
            "tokens": tokens, "items": len(per_item)}


def measure_fidelity(recipe: Recipe, candidates, sets: dict[str, tuple[EvalSet, list[dict]]], targets: dict,
                     seed_pool: list[dict], cache=None) -> dict | None:
    """Fidelity of every student-prompted candidate on each set the teacher answered; None when none was measured.
    `targets`: set name -> item id -> teacher_target (from the teacher's scoring pass)."""
    from distill.evaluate.scoring import Prompter, Scorer, build_prompts

    k = fidelity_k(recipe)
    if k is None or not any(targets.values()):
        return None
    scorer = Scorer(recipe)
    prompters: dict = {}  # model folder -> its tokenizer
    same_vocabulary = _vocabulary_check(recipe)
    out = {"k": k, "divergence": "forward KL(teacher || model) over the teacher's top K and a tail bucket",
           "answers": "the teacher's own answers to the items (evaluation decoding), teacher-forced", "sets": {}}
    answered = {}  # set name -> (set, the items with teacher tokens, their ids, the teacher's tokens by id)
    for name, (s, items) in sets.items():
        found = targets.get(name) or {}
        usable = [it for it in items if found.get(it[C.ID])]
        if usable:
            answered[name] = (s, usable, [it[C.ID] for it in usable], found)
            out["sets"][name] = {"items": len(usable), "items_without_teacher_tokens": len(items) - len(usable),
                                 "models": {}}
    # one candidate at a time over every set: its weights are loaded once
    for cand in candidates:
        if cand.role != "student" or not same_vocabulary(cand.model_dir):
            continue  # another vocabulary reads the teacher's token ids as other strings
        folder = str(cand.model_dir)
        if folder not in prompters:
            prompters[folder] = Prompter(cand.model_dir, cand.spec)
        prompter = prompters[folder]
        for name, (s, usable, ids, found) in answered.items():
            t0 = time.time()
            prompts = build_prompts(recipe, cand, s, usable, seed_pool, prompter)
            key = hash_json({"fidelity_version": FIDELITY_VERSION, "model": scorer._model_key(cand), "prompts": prompts,
                             "teacher": [found[i] for i in ids], "k": k})
            stored = cache.get(key, ids) if cache is not None else None
            if stored is not None:
                per_item = stored["fidelity"]
            else:
                tok = prompter.tokenizer
                heads = [tok(p)["input_ids"] for p in prompts]
                model = scorer._forward_model(cand)
                pad = tok.pad_token_id if tok.pad_token_id is not None else 0
                per_item = []
                for b in range(0, len(usable), BATCH):
                    part = ids[b:b + BATCH]
                    per_item += item_fidelity(model, [h + found[i]["token_ids"] for h, i in zip(heads[b:b + BATCH], part)],
                                              [len(h) for h in heads[b:b + BATCH]], [found[i] for i in part], pad)
                if cache is not None:
                    cache.put(key, {"model": cand.name, "set": name, "item_ids": ids, "fidelity": per_item})
            out["sets"][name]["models"][cand.name] = {**summarize(per_item), "from_cache": stored is not None,
                                                      "seconds": round(time.time() - t0, 1)}
    return out if out["sets"] else None


def _vocabulary_check(recipe: Recipe):
    """folder -> whether that model's token ids mean what the teacher's do (compare may name any model folder)."""
    from functools import lru_cache

    from distill.models.context import resolved_model
    from distill.models.identity import ids_that_differ, vocabulary

    teacher = vocabulary(resolved_model(recipe, "teacher")[0])

    @lru_cache(maxsize=None)
    def same(folder) -> bool:
        theirs = vocabulary(folder)
        return teacher is not None and theirs is not None and not ids_that_differ(teacher, theirs)

    return same


def fidelity_lines(report: dict) -> list[str]:
    """report.md: the fidelity table per set."""
    f = report.get("fidelity")
    if not f:
        return []
    lines = ["## Fidelity to the teacher", "",
             f"On {f['answers']}: top-1 agreement (the model's most likely next token is the teacher's) and "
             f"{f['divergence']} (K = {f['k']}), per token.", ""]
    for name, entry in f["sets"].items():
        left = entry["items_without_teacher_tokens"]
        lines += [f"`{name}`: {entry['items']} items" + (f" ({left} left out: no teacher tokens matching its answer)" if left else ""),
                  "", "| model | top-1 agreement | KL per token | tokens |", "|---|---:|---:|---:|"]
        for model, m in entry["models"].items():
            lines.append(f"| {model} | {m['top1_agreement']:.3f} | {m['kl_per_token']:.3f} | {m['tokens']} |")
        lines.append("")
    return lines
