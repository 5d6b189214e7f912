"""The vLLM engine, in process: a TeacherEngine (distill.models.engine) with LoRA adapters per request."""

from __future__ import annotations

import gc
import os
from pathlib import Path

from distill.data.captures import LOGPROBS_MODE, TokenCapture
from distill.errors import UserError
from distill.models.dtype import model_dtype
from distill.models.engine import Completion
from distill.models.vocabulary import stop_token_ids
from distill.models.hardware import request_amx_permission, this_machine
from distill.prompts.template import chat_prompt, with_chat_template
from distill.prompts.tokens import continuation_ids, prompt_ids
from distill.recipe import EngineSettings, ModelSpec

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# The CPU attention backend takes block sizes in multiples of 32 and defaults to 128, longer than a typical few-shot
# prefix: with 128, prefix caching shared nothing on the quickstart's 81-token prefix; with 32, 2.7x faster (AVX2).
CPU_BLOCK_MULTIPLE = 32
CPU_PREFIX_BLOCK = CPU_BLOCK_MULTIPLE  # the smallest block it takes


def block_size(engine: EngineSettings, on_gpu: bool, prefix_caching: bool = True) -> int | None:
    """The KV cache block size to ask vLLM for (None: its own default): the recipe's, else on a CPU with prefix
    caching the smallest, so that a short shared prefix fills whole blocks."""
    return engine.block_size or (CPU_PREFIX_BLOCK if prefix_caching and not on_gpu else None)


def configure_cpu_environment(spec: ModelSpec) -> None:
    """Environment vLLM's CPU build needs; set before vllm is imported. Never overrides the user's."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, int(round(spec.engine.kv_cache_gb)))))
    os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
    # In-process engine: starts in seconds and avoids the worker-process bf16/AMX crash seen on CPU.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    request_amx_permission()  # for an engine process forked from this one, should the user turn multiprocessing on


class VLLMEngine:
    """One vLLM engine for one model folder; optional LoRA adapters per request."""

    chunks_in_flight = 1  # one batch at a time: vLLM batches a chunk's prompts itself

    def __init__(self, folder: Path, spec: ModelSpec, seed: int = 0, max_lora_rank: int | None = None,
                 max_logprobs: int | None = None, role: str = "teacher", reads_prompt_logprobs: bool = False,
                 logprobs_mode: str | None = None):
        """`role`: the part the model plays (the student runs in its training dtype, see distill.models.dtype);
        `reads_prompt_logprobs`: the caller reads prompt log-probabilities (teacher-forced scores), which vLLM can
        return stale with prefix caching on, so the cache stays off; `logprobs_mode`: which log-probabilities sampled
        tokens carry (vLLM's modes; with max_logprobs the raw distribution, LOGPROBS_MODE, unless given)."""
        on_gpu = bool(this_machine().gpus)
        if not on_gpu:
            configure_cpu_environment(spec)
        from vllm import LLM

        if reads_prompt_logprobs and spec.engine.prefix_caching is True:
            raise UserError(f"{role}: engine.prefix_caching: true on an engine whose prompt log-probabilities are read "
                            "(vLLM can return them stale with it, vllm#42019): use auto or false")
        self.dtype = model_dtype(spec, role, folder)
        self.prefix_caching = spec.engine.prefix_caching is not False and not reads_prompt_logprobs
        options = dict(
            model=str(folder),
            tokenizer=str(folder),
            revision=spec.revision if spec.hub else None,
            dtype=self.dtype.dtype,
            enable_prefix_caching=self.prefix_caching,
            trust_remote_code=spec.trust_remote_code,
            max_model_len=spec.engine.max_model_len,
            enforce_eager=spec.engine.enforce_eager,
            tensor_parallel_size=spec.engine.tensor_parallel_size,
            quantization=spec.engine.quantization,
            seed=seed,
            # Whitespace is a per-engine setting: the per-request flag is ignored by this vLLM.
            structured_outputs_config={"backend": "xgrammar", "disable_any_whitespace": True},
        )
        block = block_size(spec.engine, on_gpu, self.prefix_caching)
        if block:
            options["block_size"] = block
        if spec.engine.max_num_seqs:
            options["max_num_seqs"] = spec.engine.max_num_seqs
        if max_logprobs:  # set explicitly: the capture's provenance names the distribution it holds
            options.update(max_logprobs=max(max_logprobs, 20), logprobs_mode=LOGPROBS_MODE)
        if logprobs_mode:
            options["logprobs_mode"] = logprobs_mode
        if on_gpu:
            options["gpu_memory_utilization"] = spec.engine.gpu_memory_utilization
        else:
            options["kv_cache_memory_bytes"] = int(spec.engine.kv_cache_gb * 1024**3)
            # A prompt prefilled over two steps has the token sampled at the first one discarded, and vLLM then
            # rewinds the request's seeded generator by an offset, which a CPU generator does not have: the engine
            # dies ("CPU Generator does not use offset") as soon as seeded sampling (temperature > 0) brings more
            # prompt tokens than one step takes. Whole prompts per step never discard a token.
            options["enable_chunked_prefill"] = False
        if max_lora_rank:
            # vLLM accepts only some ranks as the maximum; any adapter up to it is served.
            allowed = [r for r in VLLM_LORA_RANKS if r >= max_lora_rank]
            options.update(enable_lora=True, max_lora_rank=allowed[0] if allowed else max_lora_rank, max_loras=1)
        # vLLM runs full garbage collections while it loads; the libraries' objects already in memory need none.
        gc.freeze()
        self.llm = LLM(**options)
        self.lora_enabled = bool(max_lora_rank)
        self._lora_ids: dict[str, int] = {}
        self.tokenizer = with_chat_template(self.llm.get_tokenizer(), spec)
        self.chat_kwargs = dict(spec.chat_template_kwargs)
        self.folder = Path(folder)

    def describe(self) -> dict:
        """What served the rows, for their provenance."""
        import vllm

        return {"backend": "vllm", "vllm_version": vllm.__version__, "dtype": self.dtype.dtype,
                "dtype_requested": self.dtype.requested}

    def apply_chat_template(self, user: str, system: str | None = None, history: list[dict] | None = None) -> str:
        return chat_prompt(self.tokenizer, user, system, history, **self.chat_kwargs)

    @property
    def stop_ids(self) -> set[int]:
        return stop_token_ids(self.folder, tokenizer=self.tokenizer)

    def token_prompts(self, prompts: list[str]) -> list:
        """The prompts as vLLM token prompts, made as the learner makes them (distill.prompts.tokens: one BOS)."""
        from vllm.inputs import TokensPrompt

        return [TokensPrompt(prompt_token_ids=prompt_ids(self.tokenizer, p)) for p in prompts]

    def generate(
        self,
        prompts: list[str],
        *,
        seeds: list[int],
        n: int = 1,
        temperature: float = 0.0,
        top_p: float = 1.0,
        max_tokens: int = 64,
        stop: list[str] | None = None,
        stop_token_ids: list[int] | None = None,
        adapter: Path | None = None,
        adapter_name: str = "adapter",
        structured: dict | None = None,
        logprobs: int | None = None,
    ) -> list[list[Completion]]:
        """Completions for each prompt, in order. Each prompt's seed makes it reproducible on its own.

        `structured` constrains the output: {"choice": [...]}, {"json": schema} or {"regex": pattern}.
        `logprobs`: capture the top-K log-probabilities of every generated token, by token id. `stop_token_ids`: ids
        that end an answer besides the model's EOS (a chat student's end-of-turn token), kept as its last token.
        """
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest
        from vllm.sampling_params import StructuredOutputsParams

        constraint = StructuredOutputsParams(**structured) if structured else None
        params = [
            SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, stop=stop or None,
                           stop_token_ids=stop_token_ids or None, seed=s,
                           structured_outputs=constraint, logprobs=logprobs or None)
            for s in seeds
        ]
        lora = None
        if adapter:
            # vLLM caches adapters by id: each distinct adapter folder needs an id of its own.
            lora_id = self._lora_ids.setdefault(str(adapter), len(self._lora_ids) + 1)
            lora = LoRARequest(f"{adapter_name}-{lora_id}", lora_id, str(adapter))
        outputs = self.llm.generate(self.token_prompts(prompts), params, lora_request=lora, use_tqdm=False)
        return [
            [Completion(c.text, c.finish_reason, len(c.token_ids),
                        TokenCapture.from_vllm(c.token_ids, c.logprobs, logprobs) if logprobs else None)
             for c in out.outputs]
            for out in outputs
        ]

    def score(self, prompts: list[str], completions: list[str], logprobs: int) -> list[Completion]:
        """Teacher-forced: the top-K log-probabilities at every token of each given completion after its prompt
        (vLLM prompt_logprobs, one forward pass per sequence and no sampling). The completion is tokenized on its own
        and appended to the prompt's tokens, so the scored ids are exactly the completion's tokens."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        heads = [prompt_ids(self.tokenizer, p) for p in prompts]
        tails = [continuation_ids(self.tokenizer, c) for c in completions]
        params = SamplingParams(prompt_logprobs=logprobs, max_tokens=1, temperature=0.0)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=h + t) for h, t in zip(heads, tails)], params,
                                    use_tqdm=False)
        return [Completion(text, None, len(tail), TokenCapture.from_vllm(tail, out.prompt_logprobs[len(head):], logprobs))
                for text, head, tail, out in zip(completions, heads, tails, outputs)]

    def score_ids(self, prompts: list[str], completions: list[list[int]], logprobs: int) -> list[Completion]:
        """As `score`, for completions given as token ids (a student's sampled tokens): the scored ids are exactly
        these, never a re-tokenisation of their text. At temperature 1: the model's own distribution."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        heads = [prompt_ids(self.tokenizer, p) for p in prompts]
        params = SamplingParams(prompt_logprobs=logprobs, max_tokens=1, temperature=1.0)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=h + list(t)) for h, t in zip(heads, completions)],
                                    params, use_tqdm=False)
        return [Completion("", None, len(tail), TokenCapture.from_vllm(tail, out.prompt_logprobs[len(head):], logprobs),
                           prompt_tokens=len(head))
                for head, tail, out in zip(heads, completions, outputs)]

    @property
    def prompt_logprobs_exact(self) -> bool:
        """Whether batched prompt log-probabilities come back exact: not with prefix caching (vllm#42019), nor on
        vLLM 0.32's CPU build from an engine with LoRA once it has generated."""
        return not self.lora_enabled and not self.prefix_caching

    def token_logprobs(self, sequences: list[list[int]], starts: list[int]) -> list[list[float]]:
        """Teacher-forced: the log-probability of each token of each sequence from its `start` on, under the model's
        own distribution (temperature 1: the engine may report processed log-probabilities), in one batched pass."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0)
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=x) for x in sequences], params, use_tqdm=False)
        return [[out.prompt_logprobs[j][x[j]].logprob for j in range(start, len(x))]
                for out, x, start in zip(outs, sequences, starts)]

    def close(self) -> None:
        del self.llm
        # vLLM freezes the heap after start-up, the engine's objects with it; its shutdown (run as the LLM is released)
        # unfreezes and collects. Where it has not, the engine's memory is freed here, before another engine starts.
        if gc.get_freeze_count():
            gc.unfreeze()
            gc.collect()
