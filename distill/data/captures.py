"""The teacher's token distributions, captured in the generation pass: per generated token its id, the top-K ids with
their log-probabilities, the sampled token's log-probability and the mass left outside the top K.

Stored beside the rows, keyed by row id, one Parquet file per chunk (written before the chunk's rows, so a chunk that
exists always has its captures) and merged into `generate/teacher_logprobs.parquet`, read back in batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from distill.run_dir import atomic_path

# vLLM's default: log-probabilities of the model's own distribution, before temperature, top-p and penalties.
LOGPROBS_MODE = "raw_logprobs"

# Which distribution a capture holds, as the provenance names it. vLLM applies a structured-output grammar's mask to
# the logits before it reads even the raw log-probabilities, so a constrained pass (label mode) captures the
# distribution over the tokens the grammar allows: the others are -inf, and fewer than K slots may hold a probability.
# The divergences (distill.divergence) mask such slots on both sides.
DISTRIBUTIONS = {
    "raw": "the model's own next-token distribution, before temperature and top-p",
    "constrained": "the model's next-token distribution under the structured-output grammar's mask, before "
                   "temperature and top-p: tokens the grammar forbids have log-probability -inf",
}

SCHEMA = pa.schema([
    ("id", pa.string()),
    ("token_ids", pa.list_(pa.int32())),
    ("top_ids", pa.list_(pa.list_(pa.int32()))),
    ("top_logprobs", pa.list_(pa.list_(pa.float32()))),
    ("sampled_logprobs", pa.list_(pa.float32())),
    ("tail_mass", pa.list_(pa.float32())),
])


@dataclass
class TokenCapture:
    token_ids: list[int]
    top_ids: list[list[int]]  # T x K, most likely first
    top_logprobs: list[list[float]]
    sampled_logprobs: list[float]

    @property
    def tail_mass(self) -> list[float]:
        return [max(0.0, 1.0 - sum(math.exp(x) for x in row)) for row in self.top_logprobs]

    @classmethod
    def from_vllm(cls, token_ids, positions, k: int) -> "TokenCapture":
        """From vLLM's per-position {token id: Logprob} (top K, plus the sampled token when it is outside them)."""
        return cls._from_positions(token_ids, [{int(i): lp.logprob for i, lp in p.items()} for p in positions], k)

    @classmethod
    def from_served_prompt_logprobs(cls, token_ids, positions: list[dict], k: int) -> "TokenCapture":
        """From a vLLM server's `prompt_logprobs` at the given tokens' positions: per position {"token id": {"logprob":
        ...}} (top K, plus the token itself when it is outside them)."""
        return cls._from_positions(token_ids, [{int(i): lp["logprob"] for i, lp in p.items()} for p in positions], k)

    @classmethod
    def _from_positions(cls, token_ids, positions: list[dict[int, float]], k: int) -> "TokenCapture":
        """From per-position {token id: log-probability}, the given token among them."""
        top_ids, top_lps, sampled = [], [], []
        for token, position in zip(token_ids, positions):
            ranked = sorted(position.items(), key=lambda item: -item[1])[:k]
            top_ids.append([int(i) for i, _ in ranked])
            top_lps.append([float(lp) for _, lp in ranked])
            sampled.append(float(position[int(token)]))
        return cls([int(t) for t in token_ids], top_ids, top_lps, sampled)

    @classmethod
    def from_openai(cls, logprobs: dict, k: int) -> "TokenCapture":
        """From a /v1/completions choice's `logprobs` asked with return_tokens_as_token_ids ("token_id:123" keys)."""
        def token_id(key: str) -> int:
            if not key.startswith("token_id:"):
                raise ValueError(f"the server returned token {key!r}, not a token id: it must accept "
                                 f"return_tokens_as_token_ids (vLLM's OpenAI-compatible server does)")
            return int(key.split(":", 1)[1])

        top_ids, top_lps = [], []
        for position in logprobs["top_logprobs"]:
            ranked = sorted(position.items(), key=lambda item: -item[1])[:k]
            top_ids.append([token_id(t) for t, _ in ranked])
            top_lps.append([float(lp) for _, lp in ranked])
        return cls([token_id(t) for t in logprobs["tokens"]], top_ids, top_lps,
                   [float(x) for x in logprobs["token_logprobs"]])

    def record(self, row_id: str) -> dict:
        return {"id": row_id, "token_ids": self.token_ids, "top_ids": self.top_ids, "top_logprobs": self.top_logprobs,
                "sampled_logprobs": self.sampled_logprobs, "tail_mass": self.tail_mass}


def write_captures(path: Path, records: list[dict]) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist(records, schema=SCHEMA), tmp, compression="zstd")


def merge_captures(parts: Iterable[Path], out: Path) -> int:
    """The chunks' captures, in chunk order, into one file, a row group at a time. Returns the rows written."""
    rows = 0
    with atomic_path(out) as tmp:
        with pq.ParquetWriter(tmp, SCHEMA, compression="zstd") as writer:
            for part in parts:
                table = pq.read_table(part, schema=SCHEMA)
                writer.write_table(table)
                rows += table.num_rows
    return rows


def read_captures(path: Path, ids: set[str], batch_size: int = 1024) -> Iterator[dict]:
    """The captures of these row ids, a batch at a time from disk (never the whole file in memory)."""
    value_set = pa.array(sorted(ids), pa.string())
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
        wanted = pc.is_in(batch.column("id"), value_set=value_set)
        for record in batch.filter(wanted).to_pylist():
            yield record


def captured_completion(capture: dict | None, text: str, tokenizer, stops: set[int] | None = None):
    """(the teacher's tokens of its kept text, whether the token after them is the teacher's stop), or (None, why).
    `stops`: the ids that end the teacher's answer (distill.models.vocabulary.stop_token_ids); default the
    tokenizer's EOS.

    The captured ids may run past the text: the stop (EOS, or a stop string's token, which the text leaves out), or
    the bytes of a character cut at max_tokens, which vLLM holds back from the text. The longest prefix of at most a
    few tokens less that decodes to the text is the completion; none means the row's text is not what the teacher's
    distributions were measured on. "Decodes to the text" allows one difference: a label kept without the whitespace
    around it (label mode stores "playlist" where the teacher wrote " playlist"). The completion is then the tokens
    the teacher wrote, space included, as the student is trained in every mode.
    """
    if capture is None:
        return None, "no capture"
    ids = list(capture["token_ids"])
    stops = stops if stops is not None else {tokenizer.eos_token_id}
    stopped = bool(ids) and ids[-1] in stops
    end = len(ids) - 1 if stopped else len(ids)
    for n in range(end, max(end - 4, 0) - 1, -1):
        decoded = tokenizer.decode(ids[:n], skip_special_tokens=True)
        if decoded == text or (text and text == text.strip() and decoded.strip() == text):
            return (ids[:n], stopped and n == end), None
    return None, "text is not the captured tokens"
