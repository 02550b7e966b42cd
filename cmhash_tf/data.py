"""The hashing protocol's label and split helpers (NumPy only, so the entry point can check data
before TensorFlow loads)."""

from __future__ import annotations

import numpy as np

from common.errors import DataError


def multi_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim == 2:
        return labels.astype(np.float32)
    out = np.zeros((len(labels), num_classes), np.float32)
    out[np.arange(len(labels)), labels] = 1.0
    return out


def has_triplets(labels: np.ndarray, mining: str = "pivot") -> bool:
    """Whether the split can yield any triplet: some item with a positive (another item sharing a
    label; the pivot form counts the pivot itself) and a negative."""
    y = np.asarray(labels, np.float32)
    for start in range(0, len(y), 2048):  # row blocks: bounded memory on large splits
        s = (y[start:start + 2048] @ y.T) > 0
        own = s[np.arange(len(s)), start + np.arange(len(s))]
        pos = s.sum(1) - (0 if mining == "pivot" else own)
        if np.any((pos >= (2 if mining == "pivot" else 1)) & ((~s).sum(1) >= 1)):
            return True
    return False


def queries_without_relevant(queries, database) -> int:
    """How many queries share no label with any database item (the hashing metric leaves them out)."""
    q, d = np.asarray(queries.labels, np.float32), np.asarray(database.labels, np.float32)
    return int(np.sum(~((q @ d.T) > 0).any(1)))


def hold_out(n: int, seed: int, val_size: int, name: str):
    """(train rows, val rows): a seeded hold-out of `val_size` items (at most a fifth of `n`)."""
    k = min(val_size, n // 5)
    if k < 1:
        raise DataError(f"{name}: the train split ({n} pairs) is too small to hold out {val_size} validation "
                        "items (at most a fifth of it is held out)")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[k:]), np.sort(order[:k])
