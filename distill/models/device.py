"""Where the transformers side runs (reference NLL, fidelity, embeddings, training): the GPU this process was
given when there is one, else the CPU; and how many tokens one forward pass may hold there.

vLLM picks its own device; this covers the work distill does with transformers and sentence-transformers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

CPU_TOKENS_PER_PASS = 4096  # on the CPU the pass is compute-bound: larger batches gain little and cost memory


def process_count() -> int:
    """Processes of this launch (accelerate, torchrun, a Slurm job's srun): WORLD_SIZE, 1 without a launcher."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def torch_device():
    """`cuda:LOCAL_RANK` when CUDA is available (one process per GPU under accelerate / torchrun), else the CPU.
    DISTILL_DEVICE=cpu keeps the work on the CPU on a machine with a GPU."""
    import torch

    if os.environ.get("DISTILL_DEVICE", "").lower() != "cpu" and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    return torch.device("cpu")


def tokens_per_pass(device, vocab_size: int, dtype_bytes: int = 4) -> int:
    """Tokens one forward pass may hold: the logits ([tokens, vocab] in the model's dtype, plus a float32 copy of the
    rows read) dominate its memory, so on a GPU they may take a quarter of what is free."""
    import torch

    if device.type != "cuda":
        return CPU_TOKENS_PER_PASS
    free, _ = torch.cuda.mem_get_info(device)
    return max(512, int(free * 0.25 // (vocab_size * (dtype_bytes + 4))))


def length_sorted_batches(lengths: list[int], budget: int) -> Iterator[list[int]]:
    """Indices of the sequences, longest first, in batches whose padded size (count × longest) stays within
    `budget` tokens (a sequence longer than the budget goes alone): little padding, few passes."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batch: list[int] = []
    for i in order:
        if batch and (len(batch) + 1) * lengths[batch[0]] > budget:
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def padded(sequences: list[list[int]], pad: int, device, left: bool = False):
    """(input_ids, attention_mask) for padded sequences, on `device`; right-padded unless `left`."""
    import torch

    width = max(len(x) for x in sequences)
    fill = [[pad] * (width - len(x)) for x in sequences]
    ones = [[1] * len(x) for x in sequences]
    zeros = [[0] * (width - len(x)) for x in sequences]
    if left:
        ids = [f + x for f, x in zip(fill, sequences)]
        mask = [z + o for z, o in zip(zeros, ones)]
    else:
        ids = [x + f for f, x in zip(fill, sequences)]
        mask = [o + z for z, o in zip(zeros, ones)]
    return torch.tensor(ids, device=device), torch.tensor(mask, device=device)
