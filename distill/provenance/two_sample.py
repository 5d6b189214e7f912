"""Synthetic vs real: do the synthetic inputs look like the real task's inputs?

Both sides are embedded with the offline MiniLM model. Two figures:
- MMD (RBF kernel, median bandwidth) with a permutation p-value: is there any difference?
- the cross-validated AUC of a logistic regression that tells the two sides apart: how big?
  0.5 means indistinguishable, 1.0 means every input gives its origin away.
A large gap (significant and AUC >= warn_auc) is a warning: the student may learn a task
that is not the real one.
"""

from __future__ import annotations

import random

import numpy as np

from distill.recipe import SyntheticVsRealSettings

MIN_ROWS = 10  # below this per side neither figure means much


def _sample(texts: list[str], k: int, seed: int) -> list[str]:
    unique = sorted(set(t for t in texts if t))
    return unique if len(unique) <= k else random.Random(seed).sample(unique, k)


def mmd_permutation_test(x: np.ndarray, y: np.ndarray, permutations: int, seed: int) -> tuple[float, float]:
    """Biased MMD^2 between x and y and its permutation p-value (the kernel matrix is computed once)."""
    z = np.concatenate([x, y]).astype(np.float64)
    sq = np.sum(z * z, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * z @ z.T, 0.0)
    bandwidth = np.median(d2[np.triu_indices_from(d2, k=1)]) or 1.0
    kernel = np.exp(-d2 / bandwidth)
    n, m = len(x), len(y)

    def mmd2(labels: np.ndarray) -> np.ndarray:  # labels: (n + m, P) of 1 for the x side, 0 for y
        a = labels / n
        b = (1 - labels) / m
        diff = a - b
        return np.einsum("ip,ip->p", diff, kernel @ diff)

    observed = float(mmd2(np.r_[np.ones(n), np.zeros(m)][:, None])[0])
    rng = np.random.default_rng(seed)
    base = np.r_[np.ones(n), np.zeros(m)]
    null = np.concatenate([mmd2(np.stack([rng.permutation(base) for _ in range(min(100, permutations - done))], axis=1))
                           for done in range(0, permutations, 100)])
    p_value = (1 + int(np.sum(null >= observed - 1e-12))) / (1 + permutations)
    return observed, p_value


def classifier_auc(x: np.ndarray, y: np.ndarray, seed: int) -> float:
    """Cross-validated ROC AUC of a logistic regression separating x from y (each input scored out of fold)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    z = np.concatenate([x, y])
    labels = np.r_[np.ones(len(x)), np.zeros(len(y))]
    folds = StratifiedKFold(n_splits=min(5, len(x), len(y)), shuffle=True, random_state=seed)
    scores = cross_val_predict(LogisticRegression(max_iter=2000), z, labels, cv=folds, method="predict_proba")[:, 1]
    return float(roc_auc_score(labels, scores))


def compare_embeddings(x: np.ndarray, y: np.ndarray, settings: SyntheticVsRealSettings, seed: int = 0) -> dict:
    mmd2, p_value = mmd_permutation_test(x, y, settings.permutations, seed)
    auc = classifier_auc(x, y, seed)
    flagged = p_value < settings.alpha and auc >= settings.warn_auc
    return {"n_synthetic": len(x), "n_real": len(y), "mmd2": mmd2, "p_value": p_value, "auc": auc,
            "alpha": settings.alpha, "warn_auc": settings.warn_auc, "flagged": flagged}


def synthetic_vs_real(synthetic: list[str], real: list[str], settings: SyntheticVsRealSettings, seed: int = 0) -> dict:
    """Embed both sides (distinct texts, at most settings.max_rows each) and compare them."""
    synthetic, real = _sample(synthetic, settings.max_rows, seed), _sample(real, settings.max_rows, seed)
    if len(synthetic) < MIN_ROWS or len(real) < MIN_ROWS:
        return {"n_synthetic": len(synthetic), "n_real": len(real), "skipped": f"fewer than {MIN_ROWS} distinct inputs on a side",
                "flagged": False}
    from distill.models.embeddings import DEFAULT_EMBEDDER, embed

    result = compare_embeddings(embed(synthetic), embed(real), settings, seed)
    return {**result, "embedder": DEFAULT_EMBEDDER}
