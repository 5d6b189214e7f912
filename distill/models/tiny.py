"""Build a tiny random-init causal LM and a locally trained tokenizer: no download, seconds on CPU.

Tests and demos use it where a real model would be too slow; both transformers and vLLM load it. A `family` gives
the tokenizer the special-token conventions of a real model family, as its public tokenizer and generation configs
set them: whether the tokenizer adds a BOS, whether the chat template writes it too, which token ends a turn, which
ids an instruct model stops on and which EOS its base model has. What differs between families is what breaks code
written against one of them; the weights are random either way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

QUICKSTART_DATA = Path(__file__).resolve().parents[2] / "recipes" / "quickstart" / "data" / "plural_json.json"

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN25_TEMPLATE = (  # Qwen2.5-Instruct: a default system prompt when the messages bring none
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. "
    "You are a helpful assistant.<|im_end|>\n{% endif %}" + CHATML
)
QWEN3_TEMPLATE = (  # Qwen3: thinking unless enable_thinking=false, which writes an empty think block
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
LLAMA3_TEMPLATE = (  # writes bos_token, which the tokenizer adds too
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
GEMMA_TEMPLATE = (  # no system role; the assistant is "model"; writes bos_token, which the tokenizer adds too
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for m in messages %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "<start_of_turn>{{ role }}\n{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
MISTRAL_TEMPLATE = (  # Mistral-7B-Instruct-v0.1: [INST] as text, an answer ends with </s>; no system role
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% elif m['role'] == 'assistant' %}{{ m['content'] }}{{ eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)


@dataclass(frozen=True)
class Family:
    """A model family's special-token conventions (tokenizer_config.json, generation_config.json)."""

    name: str
    special: tuple[str, ...]  # special tokens, in id order
    chat_template: str
    pad: str
    bos: str | None = None  # added by the tokenizer in front of every text
    instruct_eos: str = ""  # the tokenizer's EOS in the instruct model
    instruct_stops: tuple[str, ...] = ()  # generation_config.json's eos_token_id in the instruct model
    base_eos: str = ""  # the tokenizer's (and generation config's) EOS in the base model
    arch: str = "llama"
    extra: tuple[str, ...] = field(default=())  # added tokens that are not special (Qwen3's <think>)


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("smollm2", ("<|endoftext|>", "<|im_start|>", "<|im_end|>"), CHATML, pad="<|endoftext|>",
           instruct_eos="<|im_end|>", instruct_stops=("<|im_end|>",), base_eos="<|endoftext|>", arch="qwen2"),
    Family("llama3", ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                      "<|eom_id|>", "<|eot_id|>", "<|finetune_right_pad_id|>"), LLAMA3_TEMPLATE,
           pad="<|finetune_right_pad_id|>", bos="<|begin_of_text|>", instruct_eos="<|eot_id|>",
           instruct_stops=("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"), base_eos="<|end_of_text|>"),
    Family("qwen2.5", ("<|endoftext|>", "<|im_start|>", "<|im_end|>"), QWEN25_TEMPLATE, pad="<|endoftext|>",
           instruct_eos="<|im_end|>", instruct_stops=("<|im_end|>", "<|endoftext|>"), base_eos="<|endoftext|>",
           arch="qwen2"),
    Family("qwen3", ("<|endoftext|>", "<|im_start|>", "<|im_end|>"), QWEN3_TEMPLATE, pad="<|endoftext|>",
           instruct_eos="<|im_end|>", instruct_stops=("<|im_end|>", "<|endoftext|>"), base_eos="<|endoftext|>",
           arch="qwen2", extra=("<think>", "</think>")),
    Family("gemma", ("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"), GEMMA_TEMPLATE, pad="<pad>",
           bos="<bos>", instruct_eos="<eos>", instruct_stops=("<eos>", "<end_of_turn>"), base_eos="<eos>"),
    Family("mistral", ("<unk>", "<s>", "</s>"), MISTRAL_TEMPLATE, pad="</s>", bos="<s>", instruct_eos="</s>",
           instruct_stops=("</s>",), base_eos="</s>"),
)}


def _corpus() -> list[str]:
    examples = json.loads(QUICKSTART_DATA.read_text())["examples"]
    lines = [f"Plural of {e['input']}: {e['target']}" for e in examples]
    lines += [f"Q: What is the plural of '{e['input']}'?\nA: {e['target']}" for e in examples[:200]]
    return lines


def _tokenizer(family: Family, vocab_size: int, variant: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(family.special),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    if family.bos:  # the tokenizer adds BOS to every text, as Llama 3's, Gemma's and Mistral's do
        bos = processors.TemplateProcessing(single=f"{family.bos} $A", pair=f"{family.bos} $A {family.bos} $B",
                                            special_tokens=[(family.bos, tok.token_to_id(family.bos))])
        tok.post_processor = processors.Sequence([processors.ByteLevel(trim_offsets=False), bos])
    if family.extra:
        tok.add_tokens(list(family.extra))
    eos = family.instruct_eos if variant == "instruct" else family.base_eos
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=family.pad, bos_token=family.bos,
                                     unk_token="<unk>" if "<unk>" in family.special else None, model_max_length=1024)
    hf_tok.chat_template = family.chat_template
    return hf_tok


def build_tiny_model(out: str | Path, arch: str | None = None, hidden: int = 64, layers: int = 2, seed: int = 0,
                     vocab_size: int = 1024, heads: int = 2, family: str = "smollm2", variant: str = "instruct") -> Path:
    """A tiny random model of `family`'s conventions in `out`. `variant`: instruct (stops on the family's instruct
    stops) or base (one EOS, the base model's). `arch` (qwen2 or llama) overrides the family's architecture."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}: one of {', '.join(FAMILIES)}")
    if variant not in ("instruct", "base"):
        raise ValueError(f"variant must be instruct or base, not {variant!r}")
    fam = FAMILIES[family]
    out = Path(out)
    hf_tok = _tokenizer(fam, vocab_size, variant)
    hf_tok.save_pretrained(out)

    ids = hf_tok.convert_tokens_to_ids
    stops = [ids(t) for t in fam.instruct_stops] if variant == "instruct" else [ids(fam.base_eos)]
    bos_id = ids(fam.bos) if fam.bos else None
    common = dict(
        vocab_size=len(hf_tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=max(heads // 2, 1), max_position_embeddings=1024,
        eos_token_id=hf_tok.eos_token_id, pad_token_id=hf_tok.pad_token_id, bos_token_id=bos_id, tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    arch = arch or fam.arch
    model = LlamaForCausalLM(LlamaConfig(**common)) if arch == "llama" else Qwen2ForCausalLM(Qwen2Config(**common))
    model.generation_config.eos_token_id = stops if len(stops) > 1 else stops[0]
    model.generation_config.pad_token_id = hf_tok.pad_token_id
    model.generation_config.bos_token_id = bos_id
    model.save_pretrained(out)
    return out
