"""Prompt templates: Jinja rendered in a sandbox (templates may come from untrusted recipes), few-shot draws."""

from __future__ import annotations

import functools
import hashlib
import random

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from distill.errors import RecipeError, UserError
from distill.rows import columns_of

_ENV = ImmutableSandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True, autoescape=False)


def template_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class PromptTemplate:
    """A compiled template; `where` names the recipe key it came from, for error messages."""

    def __init__(self, text: str, where: str):
        self.text, self.where, self.sha256 = text, where, template_hash(text)
        try:
            self._template = _ENV.from_string(text)
        except TemplateError as e:
            raise RecipeError(f"{where}: bad template: {e}") from None

    def render(self, **variables) -> str:
        try:
            return self._template.render(**variables)
        except TemplateError as e:
            raise UserError(f"{self.where}: template failed to render: {e}") from None


def conversation(user: str, system: str | None = None, history: list[dict] | None = None,
                 system_role: bool = True) -> list[dict]:
    """The messages a model answers: the conversation's earlier turns (`history`), then the user turn. `system` is
    the recipe's system prompt: used only where the conversation has no system message of its own. `system_role`
    False (a chat template without one, as Gemma's and Mistral's): the system message opens the first user turn."""
    messages = list(history or [])
    if system and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system})
    messages.append({"role": "user", "content": user})
    if system_role:
        return messages
    said = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    messages = [m for m in messages if m["role"] != "system"]
    if said:
        first = next(i for i, m in enumerate(messages) if m["role"] == "user")
        messages[first] = {"role": "user", "content": f"{said}\n\n{messages[first]['content']}"}
    return messages


@functools.lru_cache(maxsize=16)
def takes_system(tokenizer) -> bool:
    """Whether the tokenizer's chat template has a system role (Gemma's and Mistral's raise on one)."""
    try:
        tokenizer.apply_chat_template([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
                                      tokenize=False, add_generation_prompt=True)
    except TemplateError:
        return False
    return True


def chat_prompt(tokenizer, user: str, system: str | None = None, history: list[dict] | None = None,
                **template_kwargs) -> str:
    """The user turn, after the conversation's history and a system prompt, through the tokenizer's chat template,
    ready to answer. `template_kwargs`: the model's chat_template_kwargs (Qwen3's enable_thinking)."""
    messages = conversation(user, system, history, system_role=takes_system(tokenizer))
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **template_kwargs)


def with_chat_template(tokenizer, spec):
    """The model's tokenizer with the recipe's chat template for it (models.<role>.chat_template), if any."""
    if spec is not None and spec.chat_template is not None:
        tokenizer.chat_template = spec.chat_template
    return tokenizer


def row_variables(item: dict) -> dict:
    """What a template sees of a row: each of its source's columns by name, and `row`, all of them (a column whose
    name is no Python name is read as row["name"]). An item with no source row (a grid cell, a generated row in
    synthesize mode) is `row` itself."""
    cols = columns_of(item)
    if cols is None:
        return {"row": item}
    return {**{k: v for k, v in cols.items() if k.isidentifier()}, "row": cols}


def end_of_turn_id(tokenizer) -> int | None:
    """The token a chat template ends an assistant turn with (<|im_end|>, <|eot_id|>): the first token after the
    assistant's content when it is a special token, else the tokenizer's EOS. A chat-trained student learns to stop
    with it, and a teacher's stop is read as it."""
    marker = "Distill-end-of-answer-marker"
    text = tokenizer.apply_chat_template([{"role": "user", "content": "q"}, {"role": "assistant", "content": marker}],
                                         tokenize=False)
    after = text[text.index(marker) + len(marker):] if marker in text else ""
    ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    if ids and (ids[0] in tokenizer.all_special_ids or (ids[0] in added and added[ids[0]].special)):
        return ids[0]
    return tokenizer.eos_token_id


def draw_examples(pool: list[dict], k: int, seed: int, exclude_id: str | None = None) -> list[dict]:
    """k examples from `pool`, reproducibly; never the row itself."""
    if k == 0:
        return []
    candidates = [r for r in pool if r["id"] != exclude_id]
    if len(candidates) < k:
        raise UserError(f"generate.few_shot.k = {k} but only {len(candidates)} seed rows can serve as examples")
    return random.Random(seed).sample(candidates, k)


def row_seed(seed: int, row_id: str) -> int:
    return int(hashlib.sha256(f"{seed}:{row_id}".encode()).hexdigest()[:8], 16)
