"""Generation throughput: distill's generate stage vs a plain vLLM script vs plain HF `generate`.

Same model, same prompts, same greedy settings, one run; prints one table with generated
tokens/s, prompts/s and the ratios to plain vLLM. Engine start-up is left out of every
figure (it is paid once per stage), so the distill row measures the stage's own overhead:
prompt rendering, provenance, chunk files and the merge.

    python benchmarks/generation.py                         # quickstart recipe (SmolLM2-135M), 150 prompts
    python benchmarks/generation.py --prompts 400 --threads 1,2
    python benchmarks/generation.py --recipe my.yaml key=value ...

HF `generate` runs in a subprocess per thread count (batched, left padding) so that torch's
thread setting is its own; the best thread count is reported.
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
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def load(recipe_path: str, overrides: list[str], n_prompts: int):
    from distill.recipe import load_recipe

    return load_recipe(recipe_path, [*overrides, f"data.max_seeds={n_prompts}"])


def build_prompts(recipe, run) -> list[str]:
    """The prompts the generate stage itself sends (few-shot drawn from the seeds, as in a run)."""
    from distill.generate.stage import prepare_data
    from distill.generate.modes import mode_for
    from distill.prompts.teacher import teacher_prompts
    from distill.prompts.template import PromptTemplate

    _, seeds = prepare_data(recipe, run)
    template = PromptTemplate(recipe.generate.template, "generate.template")
    if recipe.generate.chat:
        from transformers import AutoTokenizer

        from distill.models.context import resolved_model

        tok = AutoTokenizer.from_pretrained(str(resolved_model(recipe, "teacher")[0]))

        def chat(user, system):
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
            return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        chat = None
    return teacher_prompts(recipe, template, mode_for(recipe).items(seeds), seeds, chat)


def bench_vllm(recipe, prompts: list[str], repeats: int) -> dict:
    """distill's stage and a plain vLLM script, each on its own engine with the same options; best of `repeats`."""
    from vllm import LLM, SamplingParams

    from distill.generate.stage import run_generate
    from distill.models.context import resolved_model
    from distill.models.vllm_engine import VLLMEngine
    from distill.run_dir import RunDir

    folder, _ = resolved_model(recipe, "teacher")
    spec, s = recipe.models.teacher, recipe.generate.sampling
    engine = VLLMEngine(folder, spec, seed=s.seed)  # sets the CPU environment plain vLLM needs as well
    plain = LLM(model=str(folder), dtype=spec.dtype, max_model_len=spec.engine.max_model_len, enforce_eager=True,
                seed=s.seed, kv_cache_memory_bytes=int(spec.engine.kv_cache_gb * 1024**3))
    params = [SamplingParams(n=s.n, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens,
                             stop=s.stop or None, seed=s.seed + i) for i in range(len(prompts))]
    plain.generate(prompts[:8], params[:8], use_tqdm=False)  # warm-up, as the stage's engine gets below
    engine.generate(prompts[:8], seeds=list(range(8)), max_tokens=s.max_tokens, stop=s.stop)

    results = {"plain vLLM": [], "distill generate": []}
    for r in range(repeats):
        t0 = time.perf_counter()
        outs = plain.generate(prompts, params, use_tqdm=False)
        results["plain vLLM"].append((time.perf_counter() - t0, sum(len(c.token_ids) for o in outs for c in o.outputs)))
        with tempfile.TemporaryDirectory() as tmp:
            run = RunDir(tmp)
            t0 = time.perf_counter()
            summary = run_generate(recipe, run, engine=engine)
            seconds = time.perf_counter() - t0
            assert summary["rows"] == len(prompts) * s.n, summary
        results["distill generate"].append((seconds, summary["new_tokens"]))
    engine.close()
    return {name: min(runs) for name, runs in results.items()}


def bench_hf(folder: Path, prompts: list[str], max_tokens: int, stop: list[str], threads: int, batch_size: int) -> tuple[float, int]:
    """Plain batched HF generate in this process with `threads` torch threads: (seconds, generated tokens)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(str(folder), padding_side="left")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    kwargs = dict(max_new_tokens=max_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    if stop:
        kwargs.update(stop_strings=stop, tokenizer=tok)

    def run(batch: list[str]) -> int:
        enc = tok(batch, return_tensors="pt", padding=True)
        with torch.inference_mode():
            out = model.generate(**enc, **kwargs)
        new = out[:, enc["input_ids"].shape[1]:]
        # tokens actually generated: up to the first pad after the start (a finished row is padded)
        return int(sum(min((row == tok.pad_token_id).nonzero()[0].item() + 1 if (row == tok.pad_token_id).any() else len(row), len(row))
                       for row in new))

    run(prompts[:4])  # warm-up
    t0, tokens = time.perf_counter(), 0
    for i in range(0, len(prompts), batch_size):
        tokens += run(prompts[i:i + batch_size])
    return time.perf_counter() - t0, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "quickstart" / "recipe.yaml"))
    parser.add_argument("overrides", nargs="*", metavar="key.path=value")
    parser.add_argument("--prompts", type=int, default=150, help="seed prompts to generate for")
    parser.add_argument("--threads", default="1,2", help="torch thread counts tried for HF generate")
    parser.add_argument("--batch-size", type=int, default=32, help="HF generate batch size")
    parser.add_argument("--repeats", type=int, default=2, help="vLLM runs per contender; the best is kept")
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--hf-worker", type=int, help=argparse.SUPPRESS)  # internal: one HF measurement
    args = parser.parse_args()

    from distill.models.context import resolved_model
    from distill.run_dir import RunDir

    recipe = load(args.recipe, args.overrides, args.prompts)
    folder, identity = resolved_model(recipe, "teacher")
    s = recipe.generate.sampling
    with tempfile.TemporaryDirectory() as tmp:
        prompts = build_prompts(recipe, RunDir(tmp))

    if args.hf_worker:
        seconds, tokens = bench_hf(folder, prompts, s.max_tokens, s.stop, args.hf_worker, args.batch_size)
        print(json.dumps({"seconds": seconds, "tokens": tokens}))
        return

    words = sum(len(p.split()) for p in prompts) / len(prompts)
    print(f"model {identity['name']} ({identity['family']}), {len(prompts)} prompts of ~{words:.0f} words, "
          f"max_tokens={s.max_tokens}, n={s.n}, temperature={s.temperature}; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, VLLM_CPU_OMP_THREADS_BIND={os.environ.get('VLLM_CPU_OMP_THREADS_BIND')}",
          flush=True)
    table = bench_vllm(recipe, prompts, args.repeats)
    if not args.skip_hf:
        for threads in (int(t) for t in args.threads.split(",")):
            cmd = [sys.executable, __file__, "--recipe", args.recipe, *args.overrides, "--prompts", str(args.prompts),
                   "--batch-size", str(args.batch_size), "--hf-worker", str(threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            got = json.loads(out)
            table[f"HF generate, batch {args.batch_size}, {threads} thread(s)"] = (got["seconds"], got["tokens"])

    base_s, base_tok = table["plain vLLM"]
    print("\n| contender | seconds | generated tokens | tokens/s | prompts/s | time vs plain vLLM |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (seconds, tokens) in table.items():
        print(f"| {name} | {seconds:.2f} | {tokens} | {tokens / seconds:.1f} | {len(prompts) / seconds:.1f} | "
              f"{seconds / base_s:.2f}x |")
    d_s, _ = table["distill generate"]
    print(f"\ndistill's overhead over plain vLLM: {100 * (d_s / base_s - 1):+.1f}% of the time")
    hf = {k: v for k, v in table.items() if k.startswith("HF")}
    if hf:
        best = min(hf, key=lambda k: hf[k][0])
        print(f"plain vLLM vs the best HF ({best}): {hf[best][0] / base_s:.1f}x faster")


if __name__ == "__main__":
    main()
