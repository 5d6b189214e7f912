"""Score candidates on evaluation sets: generate answers (vLLM, LoRA adapters per request) and/or
read the log-probabilities of the references (the engine's prompt log-probabilities, or transformers + PEFT
where no engine runs), then apply the set's metrics per item.

Every candidate sees the same items with the same generation settings; item i is sampled
with seed + i, so any answer can be reproduced on its own. Results are kept in the evaluation cache
(distill/evaluate/cache.py) under a key of everything that determines them; a model whose every result
is there gets no engine.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

from distill import rows as C
from distill.errors import DataError
from distill.evaluate import metrics as M
from distill.evaluate.cache import EvalCache, library_versions, metric_code, model_key
from distill.evaluate.candidates import Candidate
from distill.evaluate.targets import fidelity_k, teacher_target
from distill.models.reasoning import without_reasoning
from distill.models.dtype import model_dtype, torch_dtype
from distill.models.engine import Completion, EvaluationEngine
from distill.models.merge import adapter_engine, adapter_serving
from distill.progress import console, progress
from distill.prompts.student import render_student, student_prompt, student_stop_id
from distill.prompts.teacher import teacher_prompts
from distill.prompts.template import PromptTemplate, chat_prompt, with_chat_template
from distill.prompts.tokens import prompt_ids
from distill.recipe import EvalSet, ModelSpec, Recipe
from distill.run_dir import hash_json

# Bump when a change to this module changes an answer or a score: cached results made before then are not reused.
SCORING_VERSION = 3  # 3: prompts as token ids with one BOS; students stop on their learned stop token


def build_prompts(recipe: Recipe, cand: Candidate, s: EvalSet, items: list[dict], seed_pool: list[dict], engine) -> list[str]:
    """The exact prompt each candidate gets: the student's trained format, or the teacher's own."""
    if cand.role == "student":
        template = PromptTemplate(s.prompt_template or recipe.train.prompt_template, f"evaluate.sets.{s.name}.prompt_template")
        return [student_prompt(recipe, template, item, engine.tokenizer) for item in items]
    own = s.teacher_template or (s.prompt_template if s.data is None else None)
    if own is not None:
        template = PromptTemplate(own, f"evaluate.sets.{s.name}.teacher_template")
        return [render_student(template, item) for item in items]
    template = PromptTemplate(recipe.evaluate.teacher_template or recipe.generate.answering_template(), "evaluate.teacher_template")
    return teacher_prompts(recipe, template, items, seed_pool, engine.apply_chat_template)


def reference_text(recipe: Recipe, cand: Candidate, reference: str) -> str:
    """The reference as the model would write it after its prompt (the trained completion format)."""
    if cand.role == "student" and recipe.train.chat:
        return reference.strip()
    if cand.role == "student":
        return PromptTemplate(recipe.train.completion_template, "train.completion_template").render(
            completion=reference.strip(), row={})
    return " " + reference.strip()


def _without_reasoning(answer: Completion, tokenizer, end: str) -> Completion:
    """A reasoning teacher's answer after its thinking, scored as its training rows keep it."""
    split = without_reasoning(answer.text, answer.finish_reason, answer.capture, tokenizer, end)
    return answer if split is None else replace(answer, text=split.text, capture=split.capture)


class Prompter:
    """A model folder's tokenizer and chat template without an engine: prompts and cache keys are made before
    (or instead of) starting one, with the tokenizer vLLM loads (AutoTokenizer from the same folder)."""

    def __init__(self, folder: Path, spec: ModelSpec):
        from transformers import AutoTokenizer

        self.spec = spec
        self.tokenizer = with_chat_template(AutoTokenizer.from_pretrained(str(folder), trust_remote_code=spec.trust_remote_code), spec)

    def apply_chat_template(self, user: str, system: str | None = None, history: list[dict] | None = None) -> str:
        return chat_prompt(self.tokenizer, user, system, history, **self.spec.chat_template_kwargs)


class Scorer:
    """One vLLM engine per model folder; adapters are served on it per request."""

    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.settings = recipe.evaluate
        self.seed = recipe.evaluate.seed if recipe.evaluate.seed is not None else recipe.seed
        self.serving = adapter_serving(recipe.evaluate.serve_adapters)  # how trained adapters generate
        self._hf_key: tuple | None = None
        self._hf_model = None
        self._model_keys: dict[tuple, dict] = {}
        self.nll_sources: dict[tuple[str, str], dict] = {}  # (model, set) -> how its reference NLL was read, seconds
        # fidelity: the teacher's answers carry its top K; set name -> item id -> teacher_target
        self.fidelity_k = fidelity_k(recipe)
        self.teacher_targets: dict[str, dict] = {}

    def _generate(self, engine: EvaluationEngine, cand: Candidate, s: EvalSet, prompts: list[str]) -> list[Completion]:
        """Each prompt's answer through the engine's `generate` (from the prompt's token ids as training read them: one
        BOS whatever the family); a student stops on the token it learned to end with (in the chat format its
        end-of-turn token), as its sampler does in on-policy training."""
        d = self.decoding(s)
        stop_id = student_stop_id(self.recipe, engine.tokenizer) if cand.role == "student" else None
        adapter = Path(cand.adapter).resolve() if cand.adapter is not None and cand.merged is None else None
        outs = engine.generate(prompts, seeds=[self.seed + i for i in range(len(prompts))], temperature=d["temperature"],
                               top_p=d["top_p"], max_tokens=d["max_tokens"], stop=d["stop"] or None,
                               stop_token_ids=[stop_id] if stop_id is not None else None, adapter=adapter,
                               logprobs=self._capture_k(cand))
        answers = [o[0] for o in outs]
        if cand.role == "teacher" and self.recipe.generate.reasoning == "strip":  # as its rows were kept
            answers = [_without_reasoning(a, engine.tokenizer, self.recipe.generate.reasoning_end) for a in answers]
        return answers

    def _capture_k(self, cand: Candidate) -> int | None:
        """The top K the teacher's answers carry for fidelity (None: nothing captured)."""
        return self.fidelity_k if cand.role == "teacher" else None

    def _model_key(self, cand: Candidate) -> dict:
        memo = (str(cand.model_dir), str(cand.adapter), cand.spec.model_dump_json())  # adapters are hashed once per call
        if memo not in self._model_keys:
            self._model_keys[memo] = model_key(cand)
        return self._model_keys[memo]

    def decoding(self, s: EvalSet) -> dict:
        """How answers on `s` are sampled (item i with seed + i)."""
        e = self.settings
        return {"temperature": e.temperature, "top_p": e.top_p, "max_tokens": s.max_tokens or e.max_tokens,
                "stop": s.stop if s.stop is not None else e.stop, "seed": self.seed}

    def cache_key(self, cand: Candidate, s: EvalSet, items: list[dict], prompts: list[str]) -> str:
        """Everything that determines `cand`'s answers and scores on these items: the model (files, adapter,
        dtype, engine settings that change outputs), the items' content, the exact prompts, decoding, the
        metrics and their code, the reference texts scored by NLL, this module's version and the libraries."""
        text_metrics = [m for m in s.metrics if not M.METRICS[m].needs_logprobs]
        logprob_metrics = [m for m in s.metrics if M.METRICS[m].needs_logprobs]
        capture = {"teacher_top_k": self._capture_k(cand)} if self._capture_k(cand) and text_metrics else {}
        return hash_json({
            **capture,
            "scoring_version": SCORING_VERSION, "libraries": library_versions(), "model": self._model_key(cand),
            "role": cand.role, "served": self.serving if cand.adapter is not None and text_metrics else None,
            "metrics": list(s.metrics), "metric_code": metric_code(),
            "items": [[it[C.ID], it[C.INPUT], it[C.REFERENCE], list(it[C.REFERENCES])] for it in items],
            "prompts": hash_json(prompts),
            "decoding": self.decoding(s) if text_metrics else None,
            "nll_references": [reference_text(self.recipe, cand, it[C.REFERENCE]) for it in items] if logprob_metrics else None,
        })

    def _reference_logprobs(self, prompter, cand: Candidate, s: EvalSet, items: list[dict], prompts: list[str],
                            engine=None) -> list[list[float]]:
        """Log-probability of each reference token after its prompt. From the vLLM engine's prompt log-probabilities
        when the engine is up for this model anyway and serves no adapters (no second copy of the weights; the same
        figures for any batch size on this build), else from a transformers forward pass (PEFT for adapters). With
        LoRA enabled, vLLM 0.32's CPU logits path fails on batched prompt log-probabilities once the engine has
        generated, and one prompt per call is slower than the forward pass; with prefix caching on, vLLM can return
        stale prompt log-probabilities (vllm#42019). Both read the same token ids; which
        one ran, and how long it took, is kept in `nll_sources`."""
        tok = prompter.tokenizer
        sequences, starts = [], []
        for item, prompt in zip(items, prompts):
            full = prompt_ids(tok, prompt + reference_text(self.recipe, cand, item[C.REFERENCE]))
            head = prompt_ids(tok, prompt)
            start = 0
            while start < min(len(head), len(full)) and head[start] == full[start]:
                start += 1
            if start >= len(full):
                raise DataError(f"evaluate set {s.name}: reference {item[C.REFERENCE]!r} adds no tokens to its prompt")
            sequences.append(full)
            starts.append(max(start, 1))  # the first token of a sequence has no log-probability
        t0 = time.time()
        if engine is not None and engine.prompt_logprobs_exact and cand.adapter is None:
            result, source = engine.token_logprobs(sequences, starts), "vLLM prompt log-probabilities"
        else:
            result, source = self._forward_logprobs(tok, cand, sequences, starts), "transformers forward pass"
        self.nll_sources[(cand.name, s.name)] = {"source": source, "seconds": round(time.time() - t0, 2)}
        return result

    def _forward_logprobs(self, tok, cand: Candidate, sequences: list[list[int]], starts: list[int]) -> list[list[float]]:
        """A plain forward pass on the device this machine has: sequences go longest first in batches of about equal
        length, as many tokens per pass as the device holds (distill.models.device). Left-padded, with positions
        counted from each sequence's first token, so that the references end every row and the vocabulary projection
        runs only over the last positions (`logits_to_keep`), those that predict reference tokens."""
        import torch

        from distill.models.device import length_sorted_batches, padded, tokens_per_pass

        model = self._forward_model(cand)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        budget = tokens_per_pass(model.device, model.config.get_text_config().vocab_size, model.dtype.itemsize)
        result: list[list[float]] = [[] for _ in sequences]
        with torch.no_grad():
            for batch in length_sorted_batches([len(x) for x in sequences], budget):
                ids, mask = padded([sequences[i] for i in batch], pad, model.device, left=True)
                keep = max(len(sequences[i]) - starts[i] for i in batch) + 1
                logits = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                               logits_to_keep=keep).logits
                for row, i in enumerate(batch):
                    x, start = sequences[i], starts[i]
                    n = len(x) - start  # reference tokens, each predicted by the position before it
                    lp = torch.log_softmax(logits[row, keep - n - 1:keep - 1].float(), dim=-1)
                    target = torch.tensor(x[start:], device=lp.device).unsqueeze(1)
                    result[i] = lp.gather(1, target).squeeze(1).tolist()
        return result

    def _forward_model(self, cand: Candidate):
        """The candidate as a transformers model (base weights plus its LoRA adapter) on the device this
        machine has, kept for its sets."""
        dtype = model_dtype(cand.spec, cand.role, cand.model_dir).dtype
        key = (str(cand.model_dir), str(cand.adapter), dtype)
        if self._hf_key != key:
            from transformers import AutoModelForCausalLM

            from distill.models.device import torch_device

            self._hf_key, self._hf_model = None, None  # the previous model's memory is freed before the next loads
            model = AutoModelForCausalLM.from_pretrained(cand.model_dir, dtype=torch_dtype(dtype), trust_remote_code=cand.spec.trust_remote_code,
                                                         device_map=torch_device())
            if cand.adapter is not None:
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, str(cand.adapter))
            self._hf_key, self._hf_model = key, model.eval()
        return self._hf_model

    def needs_engine(self, cand: Candidate, prompter, sets: dict[str, tuple[EvalSet, list[dict]]], seed_pool: list[dict],
                     cache: EvalCache | None) -> bool:
        """Whether scoring `cand` generates any answer that the cache does not hold (NLL needs no vLLM engine)."""
        for s, items in sets.values():
            if all(M.METRICS[m].needs_logprobs for m in s.metrics):
                continue
            if cache is None:
                return True
            prompts = build_prompts(self.recipe, cand, s, items, seed_pool, prompter)
            if not cache.has(self.cache_key(cand, s, items, prompts), [it[C.ID] for it in items]):
                return True
        return False

    def score(self, cand: Candidate, engine, sets: dict[str, tuple[EvalSet, list[dict]]], seed_pool: list[dict],
              cache: EvalCache | None = None, prompter=None) -> list[dict]:
        """Rows of `cand` on every set, each marked `from_cache`. `engine`: the vLLM engine of its folder (None when
        nothing left to score generates); `prompter`: the folder's tokenizer (default the engine's)."""
        prompter = prompter or engine
        rows: list[dict] = []
        for name, (s, items) in sets.items():
            t0 = time.time()
            prompts = build_prompts(self.recipe, cand, s, items, seed_pool, prompter)
            ids = [it[C.ID] for it in items]
            key = self.cache_key(cand, s, items, prompts) if cache is not None else None
            stored = cache.get(key, ids) if cache is not None else None
            if stored is not None:
                texts, finish, per_item = stored["predictions"], stored["finish_reasons"], stored["scores"]
                targets = stored.get("teacher_targets")
            else:
                texts, finish, per_item, targets = self._score_set(engine, prompter, cand, s, items, prompts)
                if cache is not None:
                    cache.put(key, {"model": cand.name, "set": name, "item_ids": ids, "predictions": texts,
                                    "finish_reasons": finish, "scores": per_item, "teacher_targets": targets})
            if targets is not None:
                self.teacher_targets[name] = dict(zip(ids, targets))
            headline = s.metrics[0]
            mean = sum(per_item[headline]) / max(len(items), 1)
            nll = self.nll_sources.get((cand.name, name)) if stored is None else None
            via = f"; reference NLL from the {nll['source']} in {nll['seconds']:.1f}s" if nll else ""
            via += "; answers from the adapter merged into its base" if cand.merged is not None and stored is None else ""
            console(f"[evaluate] {cand.name} on {name}: {headline}={mean:.3f} ({len(items)} items, {time.time() - t0:.1f}s{via})")
            for i, (item, prompt) in enumerate(zip(items, prompts)):
                rows.append({
                    "set": name, "model": cand.name, "step": cand.step, "item_id": item[C.ID], C.INPUT: item[C.INPUT],
                    C.REFERENCE: item[C.REFERENCE], C.REFERENCES: list(item[C.REFERENCES]), C.SLICE: item[C.SLICE],
                    C.PROMPT: prompt, "prediction": texts[i], "finish_reason": finish[i],
                    "score": per_item[headline][i], "scores": {m: per_item[m][i] for m in s.metrics},
                    "from_cache": stored is not None,
                })
        return rows

    def _score_set(self, engine, prompter, cand: Candidate, s: EvalSet, items: list[dict], prompts: list[str]):
        """(answers, finish reasons, per-item scores by metric, the teacher's answer tokens and top K or None) of `cand`
        on one set."""
        text_metrics = [m for m in s.metrics if not M.METRICS[m].needs_logprobs]
        answers = self._generate(engine, cand, s, prompts) if text_metrics else [None] * len(items)
        k = self._capture_k(cand)
        targets = [teacher_target(a, prompter.tokenizer) for a in answers] if k and text_metrics else None
        texts = [a.text.strip() if a is not None else None for a in answers]
        per_item: dict[str, list[float]] = {}
        for m in s.metrics:
            if M.METRICS[m].needs_logprobs:
                result = M.compute(m, self._reference_logprobs(prompter, cand, s, items, prompts, engine), [it[C.REFERENCE] for it in items])
            else:
                result = M.compute(m, texts, [it[C.REFERENCES] for it in items])
            per_item[m] = result["scores"]
        return texts, [a.finish_reason if a is not None else None for a in answers], per_item, targets


def score_candidates(recipe: Recipe, candidates: list[Candidate], sets: dict[str, tuple[EvalSet, list[dict]]],
                     seed_pool: list[dict], cache: EvalCache | None = None, teacher_targets: dict | None = None,
                     work_dir: Path | None = None) -> list[dict]:
    """Every candidate on every set; one engine per model folder and engine settings, candidates in the order given.
    With a cache, results found there are not scored again, and a folder whose every answer is cached starts no engine.
    An adapter served merged (evaluate.serve_adapters) gets an engine of its own on its merged weights, written under
    `work_dir` (default: the system's temporary folder) and removed once it is scored.
    `teacher_targets`, when given, is filled with the teacher's answer tokens and top K per set (for fidelity)."""
    names, set_names = [c.name for c in candidates], list(sets)
    scorer = Scorer(recipe)

    # One engine per model folder and engine settings: a teacher that shares the student's weights but runs in
    # another dtype (or with other engine settings) gets an engine of its own, as its results' cache key says.
    groups: dict[tuple[Path, str, str, str | None], list[Candidate]] = defaultdict(list)
    for cand in candidates:
        folder = Path(cand.model_dir).resolve()
        settings = cand.spec.model_dump_json(include={"engine", "revision", "trust_remote_code"})
        merged = str(cand.adapter) if cand.adapter is not None and scorer.serving == "merged" else None
        groups[(folder, model_dtype(cand.spec, cand.role, folder).dtype, settings, merged)].append(cand)
    by_name: dict[str, list[dict]] = {}
    bar = progress(len(candidates), "evaluate", unit="model")
    for (folder, dtype, _, merged), group in groups.items():
        prompter = Prompter(folder, group[0].spec)
        with ExitStack() as serving:
            engine = None
            if any(scorer.needs_engine(cand, prompter, sets, seed_pool, cache) for cand in group):
                capture = max((scorer._capture_k(c) or 0 for c in group), default=0) or None
                engine, path = serving.enter_context(adapter_engine(
                    folder, group[0].spec, group[0].role, dtype, scorer.seed, merged=merged and Path(merged),
                    adapters=() if merged else tuple(c.adapter for c in group if c.adapter is not None),
                    max_logprobs=capture, work_dir=work_dir))
                if path is not None:
                    group = [replace(cand, merged=path) for cand in group]
            for cand in group:
                by_name[cand.name] = scorer.score(cand, engine, sets, seed_pool, cache, prompter)
                bar.update(1)
    bar.close()
    if teacher_targets is not None:
        teacher_targets.update(scorer.teacher_targets)
    hits = sorted({(r["model"], r["set"]) for rows in by_name.values() for r in rows if r["from_cache"]},
                  key=lambda x: (names.index(x[0]), set_names.index(x[1])))
    if hits:
        console(f"[evaluate] from the evaluation cache ({cache.root}), scored by an earlier run with the same model, "
                f"items, prompts and settings: {', '.join(f'{m} on {s}' for m, s in hits)}")
    return [row for cand in candidates for row in by_name[cand.name]]
