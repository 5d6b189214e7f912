"""Benchmark: distill's transformers side on this machine's GPU against its CPU, in one run.

Each part runs distill's own code twice, once with DISTILL_DEVICE=cpu, and prints the two times, their
ratio and how closely the results agree:

- reference NLL (evaluate): the scorer's length-sorted forward pass over held-out plurals;
- fidelity (evaluate): the student's top-K agreement with teacher tokens;
- embeddings (filters, provenance): sentence embeddings of 10k texts;
- LoRA training (train): TRL's SFTTrainer as the train stage builds it, bf16 on the GPU;
- ZeRO-3 load (train): under DeepSpeed ZeRO-3, whether the student's weights are partitioned as they load
  (`training_arguments` before `from_pretrained`), in a one-process `torchrun`; needs `deepspeed`.

The models are built here from a config (no download): a Qwen2-shaped causal LM of `--hidden` × `--layers`
with a tokenizer trained on the quickstart's words, and a BERT-shaped sentence encoder. vLLM's GPU path
(generation, the evaluate stage's answers) is not part of this benchmark.

    python benchmarks/gpu.py                            # on a GPU machine, about 2 minutes
    python benchmarks/gpu.py --hidden 128 --layers 2    # a quick CPU-only pass
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PLURAL = ROOT / "recipes" / "quickstart" / "data" / "plural_json.json"

RECIPE = """\
name: gpu-bench
models:
  teacher: {{path: {model}, dtype: {dtype}}}
  student: {{path: {model}, dtype: {dtype}}}
data: {{path: {data}, heldout: {{size: 24}}}}
generate: {{template: "Plural of {{{{ input }}}}:"}}
train:
  prompt_template: "Plural of {{{{ input }}}}:"
  lora: {{r: 16, alpha: 32, target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]}}
  batch_size: {batch_size}
  max_length: 64
  logging_steps: 5
evaluate:
  sets: [{{name: plural, data: heldout, metrics: [nll]}}]
"""


@contextlib.contextmanager
def on_device(name: str):
    """distill's device choice (distill.models.device) forced to the CPU, or left to find the GPU."""
    before = os.environ.get("DISTILL_DEVICE")
    os.environ["DISTILL_DEVICE"] = name
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("DISTILL_DEVICE", None)
        else:
            os.environ["DISTILL_DEVICE"] = before


def synchronize():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def words() -> list[dict]:
    return json.loads(PLURAL.read_text())["examples"]


def recipe_for(model: Path, dtype: str, folder: Path, batch_size: int = 16):
    from distill.recipe import load_recipe

    path = folder / f"recipe-{dtype}.yaml"
    path.write_text(RECIPE.format(model=model, data=PLURAL, dtype=dtype, batch_size=batch_size))
    return load_recipe(path)


def _max_abs(out: dict, key: str, difference) -> float | None:
    """How far the GPU's results are from the CPU's (None with one device)."""
    return difference(out["cpu"][key], out["gpu"][key]) if len(out) == 2 else None


def bench_nll(recipe, model: Path, devices: list[str]) -> dict:
    """The evaluate stage's reference NLL of the base model on every plural (float32)."""
    from distill import rows as C
    from distill.evaluate.candidates import Candidate
    from distill.evaluate.scoring import Prompter, Scorer

    items = [{C.ID: str(i), C.INPUT: e["input"], C.REFERENCE: e["target"], C.REFERENCES: [e["target"]], C.SLICE: "all"}
             for i, e in enumerate(words())]
    cand = Candidate(name="base", role="student", model_dir=model, spec=recipe.models.student)
    prompter = Prompter(model, recipe.models.student)
    prompts = [f"Plural of {it[C.INPUT]}:" for it in items]
    out = {}
    for device in devices:
        with on_device(device):
            scorer = Scorer(recipe)
            scorer._forward_model(cand)  # the load is timed apart: the pass is what the device changes
            for _ in range(2 if device != "cpu" else 1):  # a first GPU pass pays for kernel selection
                synchronize()
                t0 = time.perf_counter()
                lps = scorer._reference_logprobs(prompter, cand, recipe.evaluate.sets[0], items, prompts)
                synchronize()
                seconds = time.perf_counter() - t0
            out[device] = {"seconds": seconds, "logprobs": lps, "on": str(scorer._hf_model.device)}
    tokens = sum(len(x) for x in out[devices[0]]["logprobs"])
    return {"what": f"reference NLL, {len(items)} items / {tokens} tokens", "result": out,
            "agreement": _max_abs(out, "logprobs", lambda a, b: max(abs(x - y) for u, v in zip(a, b) for x, y in zip(u, v))),
            "agreement_unit": "max |Δ log p| per token"}


def bench_fidelity(recipe, model: Path, devices: list[str]) -> dict:
    """The evaluate stage's fidelity pass (student's top-K against teacher tokens) on 512 items of 16 tokens."""
    import random

    import torch

    from distill.evaluate.candidates import Candidate
    from distill.evaluate.fidelity import item_fidelity
    from distill.evaluate.scoring import Scorer

    rng = random.Random(0)
    cand = Candidate(name="student", role="student", model_dir=model, spec=recipe.models.student)
    sequences, starts, targets = [], [], []
    for _ in range(512):
        head = [rng.randrange(3, 1000) for _ in range(rng.randrange(8, 24))]
        answer = [rng.randrange(3, 1000) for _ in range(16)]
        top = [[rng.randrange(3, 1000) for _ in range(8)] for _ in answer]
        lps = torch.log_softmax(torch.randn(16, 8), -1).tolist()
        sequences.append(head + answer), starts.append(len(head)), targets.append({"top_ids": top, "top_logprobs": lps})
    out = {}
    for device in devices:
        with on_device(device):
            m = Scorer(recipe)._forward_model(cand)
            synchronize()
            t0 = time.perf_counter()
            per_item = []
            for b in range(0, 512, 64):
                per_item += item_fidelity(m, sequences[b:b + 64], starts[b:b + 64], targets[b:b + 64], 0)
            synchronize()
            out[device] = {"seconds": time.perf_counter() - t0, "kl": [x["kl_sum"] for x in per_item], "on": str(m.device)}
    return {"what": "fidelity, 512 items × 16 teacher tokens", "result": out,
            "agreement": _max_abs(out, "kl", lambda a, b: max(abs(x - y) / max(abs(x), 1e-6) for x, y in zip(a, b))),
            "agreement_unit": "max relative Δ KL per item"}


def build_encoder(folder: Path, tokenizer_from: Path) -> Path:
    """A BERT-shaped sentence encoder (MiniLM's size: 6 layers of 384) with random weights, saved as a
    sentence-transformers folder."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel

    hf = folder / "encoder-hf"
    tok = AutoTokenizer.from_pretrained(tokenizer_from)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                         intermediate_size=1536, pad_token_id=tok.pad_token_id)).save_pretrained(hf)
    tok.save_pretrained(hf)
    word = models.Transformer(str(hf), max_seq_length=128)
    encoder = SentenceTransformer(modules=[word, models.Pooling(384, "mean")], device="cpu")
    encoder.save(str(folder / "encoder"))
    return folder / "encoder"


def bench_embeddings(encoder: Path, devices: list[str]) -> dict:
    import numpy as np

    from distill.models import embeddings

    base = [f"The plural of {e['input']} is {e['target']}, as in the sentence about {e['comment'] or 'words'}."
            for e in words()]
    texts = [f"{base[i % len(base)]} ({i})" for i in range(10000)]
    out = {}
    for device in devices:
        with on_device(device):
            embeddings.load_embedder.cache_clear()
            model = embeddings.load_embedder(str(encoder))
            embeddings.embed(texts[:256], str(encoder))  # warm-up
            synchronize()
            t0 = time.perf_counter()
            vectors = embeddings.embed(texts, str(encoder))
            synchronize()
            out[device] = {"seconds": time.perf_counter() - t0, "vectors": vectors, "on": str(model.device)}
    agree = None
    if len(devices) == 2:
        a, b = (out[d]["vectors"] for d in devices)
        agree = float(1 - np.min(np.sum(a * b, axis=1)))
    return {"what": "embeddings, 10000 texts", "result": out, "agreement": agree, "agreement_unit": "max 1 − cos"}


def bench_training(folder: Path, model: Path, devices: list[str], steps: int, batch_size: int) -> dict:
    """The train stage's SFTTrainer (LoRA r=16 on every projection) for `steps` steps of `batch_size` rows: float32
    on the CPU, bf16 on the GPU, as the train stage chooses for a student of dtype bfloat16."""
    import torch

    from distill.train.stage import build_trainer

    rows = [{"prompt": f"Plural of {e['input']}:", "completion": f" {e['target']}<|im_end|>"} for e in words()]
    out = {}
    for device in devices:
        with on_device(device):
            recipe = recipe_for(model, "bfloat16" if device != "cpu" else "float32", folder, batch_size)
            trainer, _ = build_trainer(recipe, model, rows, folder / f"ckpt-{device}")
            trainer.args.max_steps = steps
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            result = trainer.train()
            seconds = time.perf_counter() - t0
            losses = [h["loss"] for h in trainer.state.log_history if "loss" in h] or [float("nan")]
            out[device] = {"seconds": seconds, "on": f"{trainer.model.device}, bf16={trainer.args.bf16}",
                           "first_loss": losses[0], "last_loss": losses[-1], "steps": result.global_step,
                           "peak_gib": torch.cuda.max_memory_allocated() / 2 ** 30 if device != "cpu" else None}
    return {"what": f"LoRA training, {steps} steps × {batch_size} rows", "result": out, "agreement": None, "agreement_unit": ""}


def zero3_probe(model: str, folder: str) -> None:
    """Run under torchrun with DeepSpeed ZeRO-3 in the environment: print how the student's weights load
    before and after the training arguments exist."""
    import torch
    from transformers import AutoModelForCausalLM

    from distill.train.stage import training_arguments

    recipe = recipe_for(Path(model), "bfloat16", Path(folder))

    def loaded() -> dict:
        m = AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16)
        params = list(m.parameters())
        return {"partitioned": sum(hasattr(p, "ds_id") and p.numel() == 0 for p in params), "params": len(params)}

    before = loaded()
    args = training_arguments(recipe, Path(folder) / "zero3")
    after = loaded()
    print("ZERO3", json.dumps({"before_arguments": before, "after_arguments": after,
                               "zero_stage": args.deepspeed_plugin.zero_stage if args.deepspeed_plugin else None}))


def bench_zero3(model: Path, folder: Path) -> dict:
    if importlib.util.find_spec("deepspeed") is None:
        return {"what": "ZeRO-3 load", "skipped": "deepspeed is not installed"}
    import torch

    accelerator = {} if torch.cuda.is_available() else {"DS_ACCELERATOR": "cpu"}
    env = {**os.environ, **accelerator, "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
           "ACCELERATE_MIXED_PRECISION": "bf16", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", __file__,
                           "--zero3-probe", str(model), str(folder)], capture_output=True, text=True, env=env, timeout=600)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("ZERO3 ")), None)
    if proc.returncode or line is None:
        return {"what": "ZeRO-3 load", "skipped": f"probe failed ({proc.returncode}): {proc.stderr[-1500:]}"}
    return {"what": "ZeRO-3 load", "zero3": json.loads(line[6:])}


def table(parts: list[dict], devices: list[str]) -> str:
    gpu = devices[-1] if len(devices) == 2 else None
    lines = ["| part | CPU s | GPU s | GPU vs CPU | agreement | where |", "| --- | ---: | ---: | ---: | --- | --- |"]
    for p in parts:
        if "result" not in p:
            continue
        r = p["result"]
        cpu_s = r["cpu"]["seconds"]
        gpu_s = r[gpu]["seconds"] if gpu else None
        agree = f"{p['agreement']:.2g} ({p['agreement_unit']})" if p.get("agreement") is not None else ""
        where = "; ".join(f"{d}: {r[d]['on']}" for d in devices)
        lines.append(f"| {p['what']} | {cpu_s:.2f} | {gpu_s:.2f} | {cpu_s / gpu_s:.1f}x faster | {agree} | {where} |"
                     if gpu else f"| {p['what']} | {cpu_s:.2f} | – | – | {agree} | {where} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=768, help="the causal LM's hidden size (768: GPT-2 small's)")
    parser.add_argument("--layers", type=int, default=12, help="its layers")
    parser.add_argument("--steps", type=int, default=40, help="training steps per device")
    parser.add_argument("--batch-size", type=int, default=16, help="training rows per step")
    parser.add_argument("--parts", default="nll,fidelity,embeddings,training,zero3", help="which parts, comma-separated")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument("--zero3-probe", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.zero3_probe:
        return zero3_probe(*args.zero3_probe)

    import torch

    from distill.models.tiny import build_tiny_model

    devices = ["cpu", "gpu"] if torch.cuda.is_available() else ["cpu"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = build_tiny_model(folder / "lm", hidden=args.hidden, layers=args.layers, heads=max(args.hidden // 64, 2))
        n = sum(p.numel() for p in __import__("transformers").AutoModelForCausalLM.from_pretrained(model).parameters())
        print(f"causal LM: {args.hidden} × {args.layers} layers, {n / 1e6:.1f}M parameters; "
              f"{torch.cuda.get_device_name() if devices[-1] == 'gpu' else 'no GPU'}", flush=True)
        recipe = recipe_for(model, "float32", folder)
        parts = []
        for name, run in [("nll", lambda: bench_nll(recipe, model, devices)),
                          ("fidelity", lambda: bench_fidelity(recipe, model, devices)),
                          ("embeddings", lambda: bench_embeddings(build_encoder(folder, model), devices)),
                          ("training", lambda: bench_training(folder, model, devices, args.steps, args.batch_size)),
                          ("zero3", lambda: bench_zero3(model, folder))]:
            if name not in args.parts.split(","):
                continue
            t0 = time.perf_counter()
            parts.append(run())
            print(f"[{name}] done in {time.perf_counter() - t0:.1f}s", flush=True)
        print(table(parts, devices))
        for p in parts:
            if "training" in p["what"].lower():
                for d, r in p["result"].items():
                    print(f"training on {d}: loss {r['first_loss']:.3f} -> {r['last_loss']:.3f} in {r['steps']} steps"
                          + (f", peak GPU memory {r['peak_gib']:.2f} GiB" if r["peak_gib"] else ""))
            if "zero3" in p:
                z = p["zero3"]
                print(f"ZeRO-3 (stage {z['zero_stage']}): parameters partitioned at load: "
                      f"{z['before_arguments']['partitioned']} of {z['before_arguments']['params']} when the model loads "
                      f"before the training arguments, {z['after_arguments']['partitioned']} of "
                      f"{z['after_arguments']['params']} after them (as the train stage does)")
            if "skipped" in p:
                print(f"{p['what']}: skipped, {p['skipped']}")
        if args.json:
            slim = [{k: v for k, v in p.items() if k != "result"} | ({"result": {d: {k: v for k, v in r.items() if k not in (
                "logprobs", "kl", "vectors")} for d, r in p["result"].items()}} if "result" in p else {}) for p in parts]
            args.json.write_text(json.dumps(slim, indent=1))


if __name__ == "__main__":
    main()
