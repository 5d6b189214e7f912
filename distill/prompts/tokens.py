"""A prompt's text as token ids, the same for every engine and the learner.

Tokenizers differ by family: Llama 3's, Gemma's and Mistral's add a BOS token, Qwen's and SmolLM2's add none, and
a chat template may write `bos_token` itself. vLLM tokenizes a text prompt with the tokenizer's special tokens, a
learner that tokenizes a chat prompt without them sees one BOS fewer: the sampler's and the learner's
log-probabilities would then come from two contexts. Every prompt is therefore made ids here, once, and handed as
ids to vLLM (TokensPrompt), to a server and to the learner alike.
"""

from __future__ import annotations


def prompt_ids(tokenizer, text: str) -> list[int]:
    """`text` as the model reads it: the tokenizer's own special tokens added (BOS where its family adds one), but
    never a second BOS before one the text already starts with (a chat template that writes `bos_token`)."""
    ids = list(tokenizer(text)["input_ids"])
    bos = tokenizer.bos_token_id
    if bos is not None and ids[:2] == [bos, bos] and text.startswith(tokenizer.bos_token):
        return ids[1:]
    return ids


def continuation_ids(tokenizer, text: str) -> list[int]:
    """Text that follows a prompt (an answer, a reference): no special tokens of its own."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
