"""generate: split the real data, prompt the teacher for every seed, write rows in atomic chunks.

Work is cut into fixed chunks of seeds. Chunk c belongs to shard c % N, so `--shard i/N`
processes split the work without talking to each other, and a killed run redoes only the
chunks that were never renamed into place.
"""

from __future__ import annotations

import json
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from distill import rows as C
from distill.data.loaders import read_rows
from distill.data.split import row_id, split_heldout
from distill.errors import UserError
from distill.generate.prompts import PromptTemplate, draw_examples, row_seed
from distill.models.context import resolved_model
from distill.progress import progress
from distill.recipe import Recipe
from distill.run_dir import RunDir, atomic_path, hash_json, write_json


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_parquet(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist(rows), tmp)


def prepare_data(recipe: Recipe, run: RunDir) -> tuple[list[dict], list[dict]]:
    """Split the real data into held-out items and seeds; write both to the run directory."""
    d = recipe.data
    need = (d.input_field,) + ((d.target_field,) if recipe.generate.few_shot.k and d.target_field else ())
    raw = read_rows(d.path, d.format, required=need)
    if d.heldout.size >= len(raw):
        raise UserError(f"data.heldout.size = {d.heldout.size} leaves no seeds: {d.path} has {len(raw)} rows")
    heldout, rest = split_heldout(raw, d.heldout.size, d.heldout.seed, d.slice_field, d.heldout.min_per_slice)

    def norm(r: dict) -> dict:
        target = r.get(d.target_field) if d.target_field else None
        refs = [] if target is None else [str(t) for t in target] if isinstance(target, list) else [str(target)]
        return {
            C.ID: row_id(r[d.input_field]),
            C.INPUT: str(r[d.input_field]),
            C.REFERENCE: refs[0] if refs else None,
            C.REFERENCES: refs,
            C.SLICE: None if not d.slice_field else str(r.get(d.slice_field)),
            "source_line": r["_line"],
        }

    heldout_rows = [norm(r) for r in heldout]
    held_inputs = {r[C.INPUT] for r in heldout_rows}
    # The same input may appear twice in real data: a seed must never equal a held-out item.
    seed_rows = [norm(r) for r in rest if str(r[d.input_field]) not in held_inputs]
    if d.max_seeds:
        seed_rows = seed_rows[: d.max_seeds]
    _write_jsonl(run.heldout, heldout_rows)
    _write_jsonl(run.seeds, seed_rows)
    return heldout_rows, seed_rows


def teacher_prompts(recipe: Recipe, template: PromptTemplate, items: list[dict], pool: list[dict], render_chat=None) -> list[str]:
    """The teacher's prompt for each item, few-shot examples drawn from `pool` (seeds only)."""
    g = recipe.generate
    fixed = None if g.few_shot.per_row else draw_examples(pool, g.few_shot.k, g.few_shot.seed)
    prompts = []
    for item in items:
        examples = fixed if fixed is not None else draw_examples(pool, g.few_shot.k, row_seed(g.few_shot.seed, item[C.ID]), item[C.ID])
        examples = [{"input": e[C.INPUT], "target": e[C.REFERENCE]} for e in examples]
        text = template.render(input=item[C.INPUT], examples=examples, row=item)
        prompts.append(render_chat(text, g.system_prompt) if g.chat else text)
    return prompts


def fingerprint_settings(recipe: Recipe) -> dict:
    return {"data": recipe.data.model_dump(mode="json"), "generate": recipe.generate.model_dump(mode="json")}


def run_generate(recipe: Recipe, run: RunDir, shard: tuple[int, int] = (0, 1)) -> dict:
    started = time.time()
    g = recipe.generate
    teacher_dir, teacher = resolved_model(recipe, "teacher")
    _, seeds = prepare_data(recipe, run)
    chunk_size = g.chunk_size
    n_chunks = (len(seeds) + chunk_size - 1) // chunk_size
    shard_index, shard_count = shard

    # Chunks written under other settings are stale: drop them all rather than mix.
    key = hash_json({"settings": fingerprint_settings(recipe), "teacher": teacher["weights_sha256"], "seeds": [r[C.ID] for r in seeds]})
    stamp = run.chunks / "_settings.json"
    if stamp.is_file() and json.loads(stamp.read_text()).get("key") != key:
        shutil.rmtree(run.chunks)
    write_json(stamp, {"key": key})

    mine = [c for c in range(n_chunks) if c % shard_count == shard_index]
    todo = [c for c in mine if not _chunk_path(run, c).is_file()]
    done_rows = sum(min(chunk_size, len(seeds) - c * chunk_size) for c in mine if c not in todo)
    tokens = failures = 0
    template = PromptTemplate(g.template, "generate.template")
    sampling = g.sampling.model_dump(mode="json")

    if todo:
        from distill.generate.vllm_engine import VLLMEngine

        engine = VLLMEngine(teacher_dir, recipe.models.teacher, seed=g.sampling.seed)
        bar = progress(total=sum(min(chunk_size, len(seeds) - c * chunk_size) for c in mine), desc="generate", unit="row", initial=done_rows)
        t0 = time.time()
        for c in todo:
            items = seeds[c * chunk_size:(c + 1) * chunk_size]
            prompts = teacher_prompts(recipe, template, items, seeds, engine.apply_chat_template)
            request_seeds = [g.sampling.seed + c * chunk_size + i for i in range(len(items))]
            outputs = engine.generate(
                prompts, seeds=request_seeds, n=g.sampling.n, temperature=g.sampling.temperature,
                top_p=g.sampling.top_p, max_tokens=g.sampling.max_tokens, stop=g.sampling.stop,
            )
            now = datetime.now(timezone.utc).isoformat()
            out_rows = []
            for item, prompt, seed, completions in zip(items, prompts, request_seeds, outputs):
                for k, comp in enumerate(completions):
                    tokens += comp.num_tokens
                    failures += comp.finish_reason not in ("stop", "length")
                    out_rows.append({
                        C.ID: row_id(item[C.ID], k),
                        C.INPUT: item[C.INPUT],
                        C.REFERENCE: item[C.REFERENCE],
                        C.SLICE: item[C.SLICE],
                        C.PROMPT: prompt,
                        C.COMPLETION: comp.text,
                        C.SAMPLE_INDEX: k,
                        C.FINISH_REASON: comp.finish_reason,
                        C.PROVENANCE: {
                            "teacher": teacher,
                            "template_sha256": template.sha256,
                            "sampling": sampling,
                            "seed": seed,
                            "shard": f"{shard_index}/{shard_count}",
                            "chunk": c,
                            "created_at": now,
                        },
                    })
            write_parquet(_chunk_path(run, c), out_rows)
            bar.update(len(items))
            elapsed = max(time.time() - t0, 1e-9)
            bar.set_postfix(tok_s=f"{tokens / elapsed:.0f}")
        bar.close()
        engine.close()

    summary = {"seeds": len(seeds), "chunks": n_chunks, "shard": f"{shard_index}/{shard_count}",
               "chunks_this_run": len(todo), "new_tokens": tokens, "seconds": round(time.time() - started, 1)}
    if all(_chunk_path(run, c).is_file() for c in range(n_chunks)):
        merged = merge_chunks(run, n_chunks)
        summary.update(rows=merged, merged=True)
    else:
        summary.update(merged=False)
    return summary


def _chunk_path(run: RunDir, c: int) -> Path:
    return run.chunks / f"chunk-{c:05d}.parquet"


def merge_chunks(run: RunDir, n_chunks: int) -> int:
    """All chunks in chunk order, one file: the same bytes whatever the sharding was."""
    tables = [pq.read_table(_chunk_path(run, c)) for c in range(n_chunks)]
    rows = [row for t in tables for row in t.to_pylist()]
    write_parquet(run.generated, rows)
    return len(rows)
