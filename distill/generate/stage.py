"""generate: split the real data, prompt the teacher for every work item, write rows in atomic chunks.

Work items (seeds, or grid cells in synthesize mode) are cut into fixed chunks. Chunk c
belongs to shard c % N, so `--shard i/N` processes split the work without talking to each
other, and a killed run redoes only the chunks that were never renamed into place. The last
shard to finish merges the chunks in chunk order: the same rows whatever the sharding.
"""

from __future__ import annotations

import itertools
import json
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq

from distill import rows as C
from distill.data.captures import merge_captures, write_captures
from distill.data.split import selected, split_data, split_dev
from distill.generate.answer import Answering
from distill.generate.modes import mode_for
from distill.generate.sampling import ChunkStats
from distill.models.context import resolved_model
from distill.models.teacher import teacher_engine
from distill.preemption import Preempted, stop_requested
from distill.progress import console, progress
from distill.recipe import Recipe
from distill.run_dir import RunDir, hash_json, run_lock, write_json, write_jsonl, write_parquet


def prepare_data(recipe: Recipe, run: RunDir) -> tuple[list[dict], list[dict]]:
    """Split the real data into held-out items, the loop's dev items (with a loop) and seeds; write them to the run
    directory."""
    heldout_rows, seed_rows = split_data(recipe)
    dev_rows, seed_rows = split_dev(recipe, seed_rows)
    write_jsonl(run.heldout, heldout_rows)
    if recipe.loop is not None:
        write_jsonl(run.dev, dev_rows)
    write_jsonl(run.seeds, seed_rows)
    return heldout_rows, seed_rows


def fingerprint_settings(recipe: Recipe) -> dict:
    """What shapes the chunks: the stage's own fingerprint inputs (data by content, settings, the teacher by content)."""
    from distill.stages import stage_inputs

    return stage_inputs(recipe, "generate")


def open_teacher(recipe: Recipe, run: RunDir, teacher_dir: Path):
    """The engine that writes the rows (distill.models.teacher: in process, an endpoint or the run's server job)."""
    g = recipe.generate
    return teacher_engine(recipe, run, teacher_dir, stage="generate", seed=g.sampling.seed, max_logprobs=g.logprobs,
                          reads_prompt_logprobs=mode_for(recipe).reads_prompt_logprobs)


def _shard_lock(run: RunDir):
    """Held while a shard checks or clears shared files, so concurrently started shards never wipe each other's chunks
    (on other nodes too: run_lock says when the file system's flock cannot be trusted and locks by file creation)."""
    return run_lock(run.root / ".generate.lock")


def chunks_in_order(todo: list[int], make, in_flight: int):
    """Yield (c, make(c)) for each chunk of `todo`, in that order.

    in_flight > 1 (a server backend): up to that many chunks not yet yielded are made at once, in
    threads, so the next chunks' requests fill the slots a chunk's slowest requests leave idle. The
    caller still gets, and writes, each chunk whole and in order, so resume by chunk is unchanged.
    """
    if in_flight <= 1:
        for c in todo:
            yield c, make(c)
        return
    queue = iter(todo)
    with ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="chunk") as pool:
        pending = deque((c, pool.submit(make, c)) for c in itertools.islice(queue, in_flight))
        try:
            while pending:
                c, future = pending.popleft()
                made = future.result()
                nxt = next(queue, None)
                if nxt is not None:
                    pending.append((nxt, pool.submit(make, nxt)))
                yield c, made
        finally:
            for _, future in pending:  # after an error: chunks not started yet never start
                future.cancel()


def _chunk_size(recipe: Recipe, run: RunDir, items: list[dict]) -> int:
    """The chunk size of this run's chunks. Chunks written under other settings (or for other items) are stale:
    moved aside whole (kept for the user) rather than mixed. Rows are made per item, so the chunk size is no setting
    of the output (not in the fingerprint): work started with another size is finished with that one, or chunks of
    two sizes would overlap."""
    g = recipe.generate
    key = hash_json({"settings": fingerprint_settings(recipe), "items": [r[C.ID] for r in items]})
    stamp = run.chunks / "_settings.json"
    with _shard_lock(run):
        written = json.loads(stamp.read_text()) if stamp.is_file() else None
        if written and written.get("key") != key:
            console(f"[generate] chunks written under other settings moved to {run.move_aside(run.chunks, 'generate-chunks')}")
            written = None
        if not written:
            written = {"key": key, "chunk_size": g.chunk_size}
            write_json(stamp, written)
    chunk_size = written.get("chunk_size", g.chunk_size)
    if chunk_size != g.chunk_size:
        console(f"[generate] the chunks already written hold {chunk_size} prompts each: finishing with that size "
                f"(generate.chunk_size = {g.chunk_size} applies to a fresh run)")
    return chunk_size


def run_generate(recipe: Recipe, run: RunDir, shard: tuple[int, int] = (0, 1), engine=None) -> dict:
    """Generate this shard's missing chunks; merge when every chunk exists. `engine`: an open teacher engine to
    reuse (left open), else one is opened for the run and closed after it."""
    started = time.time()
    g, mode = recipe.generate, mode_for(recipe)
    # before the teacher writes anything the student could not learn from
    if recipe.train.shares_vocabulary:
        from distill.models.vocabulary import check_shared_vocabulary

        check_shared_vocabulary(recipe, both_ways=recipe.train.runs_the_teacher)
    teacher_dir, teacher = resolved_model(recipe, "teacher")
    _, seeds = prepare_data(recipe, run)
    items = mode.items(selected(recipe, seeds))  # data.answer_only: a loop round's selection; few-shot from all seeds
    shard_index, shard_count = shard

    chunk_size = _chunk_size(recipe, run, items)
    n_chunks = (len(items) + chunk_size - 1) // chunk_size

    def size(c: int) -> int:
        return min(chunk_size, len(items) - c * chunk_size)

    mine = [c for c in range(n_chunks) if c % shard_count == shard_index]
    _remove_partial_writes(run, mine)
    todo = [c for c in mine if not _chunk_path(run, c).is_file()]
    stats = ChunkStats()
    generating = 0.0

    if todo:
        own_engine = engine is None
        engine = open_teacher(recipe, run, teacher_dir) if own_engine else engine
        answering = Answering(recipe, mode, engine, seeds, teacher, shard)
        bar = progress(total=sum(size(c) for c in mine), desc=f"generate ({mode.name})", unit="prompt",
                       initial=sum(size(c) for c in mine if c not in todo))
        t0 = time.time()

        def make(c: int):
            return answering.answer(items[c * chunk_size:(c + 1) * chunk_size], c * chunk_size)

        for c, answered in chunks_in_order(todo, make, engine.chunks_in_flight):
            out_rows, captures = answering.rows(answered, c)
            stats.tokens += answered.stats.tokens
            stats.retried += answered.stats.retried
            stats.failures += sum(r[C.FAILURE] is not None for r in out_rows)
            if g.logprobs:  # before the rows: a chunk whose rows exist always has its captures
                write_captures(_captures_path(run, c), captures)
            write_parquet(_chunk_path(run, c), out_rows)
            stats.rows += len(out_rows)
            bar.update(len(answered.items))
            elapsed = max(time.time() - t0, 1e-9)
            bar.set_postfix(rows_s=f"{stats.rows / elapsed:.1f}", tok_s=f"{stats.tokens / elapsed:.0f}", failed=stats.failures)
            if c != todo[-1] and stop_requested():
                bar.close()
                raise Preempted(f"generate: stopped after chunk {c}, as the scheduler asked; the chunks written are kept "
                                f"and the next start makes the rest")
        bar.close()
        generating = time.time() - t0
        if own_engine:
            engine.close()

    seconds = time.time() - started
    summary = {"mode": mode.name, "prompts": len(items), "chunks": n_chunks, "shard": f"{shard_index}/{shard_count}",
               "chunks_this_run": len(todo), "rows_this_run": stats.rows, "failures_this_run": stats.failures,
               "retried": stats.retried, **mode.summary(stats.tokens),
               "tokens_per_s": round(stats.tokens / generating, 1) if generating else 0.0,
               "generating_seconds": round(generating, 1), "seconds": round(seconds, 1),
               "teacher_did": mode.card_text}
    with _shard_lock(run):
        if all(_chunk_path(run, c).is_file() for c in range(n_chunks)):
            merged, failures = merge_chunks(run, n_chunks)
            summary.update(rows=merged, failures=failures, merged=True)
            if g.logprobs:
                summary["captured_rows"] = merge_captures((_captures_path(run, c) for c in range(n_chunks)),
                                                          run.teacher_logprobs)
                summary["captured_distribution"] = mode.captured_distribution
        else:
            summary.update(merged=False)
    return summary


def _remove_partial_writes(run: RunDir, chunks: list[int]) -> None:
    """Temporary files a killed process left while writing these chunks (this shard's only: another shard's may be
    in progress). Never read as chunks, they would only pile up."""
    for c in chunks:
        for tmp in run.chunks.glob(f".chunk-{c:05d}.*.tmp"):
            tmp.unlink(missing_ok=True)


def _chunk_path(run: RunDir, c: int) -> Path:
    return run.chunks / f"chunk-{c:05d}.parquet"


def _captures_path(run: RunDir, c: int) -> Path:
    return run.chunks / f"chunk-{c:05d}.logprobs.parquet"


def merge_chunks(run: RunDir, n_chunks: int) -> tuple[int, int]:
    """All chunks in chunk order, one file: the same rows whatever the sharding. Returns (rows, failures)."""
    tables = [pq.read_table(_chunk_path(run, c)) for c in range(n_chunks)]
    rows = [row for t in tables for row in t.to_pylist()]
    write_parquet(run.generated, rows)
    return len(rows), sum(r.get(C.FAILURE) is not None for r in rows)
