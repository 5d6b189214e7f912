"""Benchmark: exact + MinHash dedup and 13-gram decontamination at 10k and 100k rows.

Synthetic rows of about 100 words (with planted exact copies, near copies and leaked eval
text) go through the filter stage's own path (`filter_table`: a datasets batched map per
filter), once with each `near_dedup.backend` (rensa, datasketch), and, for comparison,
through the same work written as plain loops that use a MinHash library directly
(datasketch's MinHash.update_batch and MinHashLSH; rensa's RMinHash and RMinHashLSH) and a
Python set of 13-gram tuples. Near-dup recall counts the planted near copies flagged as near
duplicates (by the filter stage: of the very row they copy; by a plain loop: any LSH candidate,
unchecked, as such loops are usually written). Each measurement runs in a fresh process, so its peak memory (max RSS) is its own.

    .venv/bin/python benchmarks/filters.py               # 10k and 100k rows, every way
    .venv/bin/python benchmarks/filters.py --sizes 10000 # one size
    .venv/bin/python benchmarks/filters.py --ways distill-rensa plain-datasketch
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORDS_PER_ROW = 100
EVAL_ITEMS = 1000
NGRAM, SHINGLE, NUM_PERM, THRESHOLD = 13, 5, 128, 0.8


def make_data(rows: int, folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """rows.parquet (id, input, completion) and eval.jsonl; 2% exact copies, 2% near copies, 1% leaks."""
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(30000)])
    zipf = 1.0 / np.arange(1, len(vocab) + 1)
    p = zipf / zipf.sum()

    def texts(n):
        idx = rng.choice(len(vocab), size=(n, WORDS_PER_ROW), p=p)
        return [" ".join(r) for r in vocab[idx]]

    evals = texts(EVAL_ITEMS)
    completions = texts(rows)
    n_plant = rows // 50
    for k in range(n_plant):  # exact copies with case changes
        i = rows - 1 - k
        completions[i] = completions[k].upper()
    for k in range(n_plant):  # near copies: one word changed (Jaccard of 5-word shingles about 0.9)
        i, src = rows - 1 - n_plant - k, n_plant + k
        w = completions[src].split()
        w[int(rng.integers(len(w)))] = "changed"
        completions[i] = " ".join(w)
    for k in range(rows // 100):  # 20 consecutive words of an eval item inside a row
        i, e = 3 * n_plant + k, k % EVAL_ITEMS
        w, ew = completions[i].split(), evals[e].split()
        completions[i] = " ".join(w[:40] + ew[10:30] + w[60:])
    table = pa.table({"id": [f"r{i}" for i in range(rows)], "input": [f"prompt {i}" for i in range(rows)],
                      "completion": completions})
    data = folder / f"rows-{rows}.parquet"
    pq.write_table(table, data)
    ev = folder / "eval.jsonl"
    ev.write_text("".join(json.dumps({"id": f"e{i}", "input": t}) + "\n" for i, t in enumerate(evals)))
    return data, ev


def planted_near(rows: int) -> dict[int, int]:
    """Row index of each planted near copy -> row index of the row it copies (see make_data)."""
    n_plant = rows // 50
    return {rows - 1 - n_plant - k: n_plant + k for k in range(n_plant)}


def run_distill(data: Path, ev: Path, backend: str) -> dict:
    import datasets  # noqa: F401  (imported before the clock starts, like the libraries of the plain loops)

    from distill.filters.decontam import Decontaminate
    from distill.data.contamination import EvalItem
    from distill.filters.dedup import ExactDedup, NearDedup
    from distill.filters.stage import filter_table
    from distill.recipe import DecontaminateFilter, ExactDedupFilter, NearDedupFilter

    if backend == "datasketch":
        import datasketch  # noqa: F401
    else:
        import rensa  # noqa: F401
    items = [EvalItem("eval", d["id"], [d["input"]]) for d in map(json.loads, ev.read_text().splitlines())]
    table = pq.read_table(data)
    started, cpu = time.perf_counter(), time.process_time()
    filters = [ExactDedup(ExactDedupFilter(type="exact_dedup", fields=["completion"])),
               NearDedup(NearDedupFilter(type="near_dedup", shingle=SHINGLE, threshold=THRESHOLD, num_perm=NUM_PERM, backend=backend)),
               Decontaminate(DecontaminateFilter(type="decontaminate", fields=["completion"], ngram=NGRAM, embedding_threshold=None), items=items)]
    for f in filters:
        f.label = f.name
    out = filter_table(table, filters)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    rejected_by = out.column("rejected_by").to_pylist()
    cluster = out.column("near_dup_cluster").to_pylist()
    found = sum(rejected_by[i] == "near_dedup" and cluster[i] == f"r{src}" for i, src in planted_near(table.num_rows).items())
    return {"seconds": seconds, "cpu_seconds": cpu, **{f.label: rejected_by.count(f.label) for f in filters}, "near_found": found}


def run_plain(data: Path, ev: Path, library: str) -> dict:
    """The same three checks as a plain per-row loop over a MinHash library and Python sets."""
    import re

    if library == "datasketch":
        from datasketch import MinHash, MinHashLSH

        def minhash(shingles):
            m = MinHash(num_perm=NUM_PERM)
            m.update_batch([s.encode() for s in shingles])
            return m
    else:
        from rensa import RMinHash, RMinHashLSH

        def minhash(shingles):
            m = RMinHash(NUM_PERM, 1)
            m.update(shingles)
            return m

    word = re.compile(r"\w+")
    evals = [json.loads(line)["input"] for line in ev.read_text().splitlines()]
    completions = pq.read_table(data, columns=["completion"]).column("completion").to_pylist()
    started, cpu = time.perf_counter(), time.process_time()
    eval_grams = set()
    for t in evals:
        w = word.findall(t.lower())
        eval_grams.update(tuple(w[i:i + NGRAM]) for i in range(len(w) - NGRAM + 1))
    if library == "datasketch":
        lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    else:
        lsh = RMinHashLSH(THRESHOLD, NUM_PERM, 8)  # rensa's own example for 0.8 (bands must divide num_perm)
    seen, near = set(), set()
    counts = {"exact_dedup": 0, "near_dedup": 0, "decontaminate": 0}
    for i, text in enumerate(completions):
        w = word.findall(text.lower())
        key = hashlib.sha256(" ".join(w).encode()).digest()
        if key in seen:
            counts["exact_dedup"] += 1
            continue
        seen.add(key)
        m = minhash([" ".join(w[j:j + SHINGLE]) for j in range(len(w) - SHINGLE + 1)])
        if lsh.query(m):
            counts["near_dedup"] += 1
            near.add(i)
            continue
        lsh.insert(i, m)
        if any(tuple(w[j:j + NGRAM]) in eval_grams for j in range(len(w) - NGRAM + 1)):
            counts["decontaminate"] += 1
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"seconds": seconds, "cpu_seconds": cpu, **counts, "near_found": sum(i in near for i in planted_near(len(completions)))}


WAYS = {"distill-rensa": lambda d, e: run_distill(d, e, "rensa"),
        "distill-datasketch": lambda d, e: run_distill(d, e, "datasketch"),
        "plain-datasketch": lambda d, e: run_plain(d, e, "datasketch"),
        "plain-rensa": lambda d, e: run_plain(d, e, "rensa")}


def child(way: str, data: str, ev: str) -> None:
    result = WAYS[way](Path(data), Path(ev))
    result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--ways", nargs="+", choices=list(WAYS), default=list(WAYS))
    parser.add_argument("--child", nargs=3, metavar=("WAY", "DATA", "EVAL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            data, ev = make_data(size, Path(tmp))
            for way in args.ways:
                proc = subprocess.run([sys.executable, __file__, "--child", way, str(data), str(ev)], capture_output=True, text=True)
                if proc.returncode:
                    sys.exit(f"{way} at {size} rows failed:\n{proc.stderr[-3000:]}")
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                results.append({"rows": size, "way": way, "planted": len(planted_near(size)), **r})
                print(f"{size:>7} rows  {way:<18} {r['seconds']:7.1f} s (cpu {r['cpu_seconds']:5.1f} s)  {size / r['seconds']:9.0f} rows/s  peak {r['peak_mb']:6.0f} MB  "
                      f"flagged: exact {r['exact_dedup']}, near {r['near_dedup']} (planted found {r['near_found']}), "
                      f"leaks {r['decontaminate']}", flush=True)
    print("\n| rows | way | seconds | cpu seconds | rows/s | peak MB | exact dups | near dups | near-dup recall | leaks |\n"
          "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['rows']} | {r['way']} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | {r['rows'] / r['seconds']:.0f} | {r['peak_mb']:.0f} | "
              f"{r['exact_dedup']} | {r['near_dedup']} | {r['near_found']} / {r['planted']} | {r['decontaminate']} |")
    by = {(r["rows"], r["way"]): r["seconds"] for r in results}
    sizes = sorted({r["rows"] for r in results})
    for size in sizes:
        base = [w for w in args.ways if w != "distill-rensa" and (size, w) in by]
        if (size, "distill-rensa") in by:
            for way in base:
                print(f"{size} rows: distill-rensa is {by[(size, way)] / by[(size, 'distill-rensa')]:.1f}x the speed of {way}")
    if len(sizes) > 1:
        lo, hi = sizes[0], sizes[-1]
        for way in args.ways:
            print(f"{way}: {hi // lo}x the rows took {by[(hi, way)] / by[(lo, way)]:.1f}x the time")


if __name__ == "__main__":
    main()
