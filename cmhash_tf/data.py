"""The hashing protocol's label and split helpers (NumPy only, so the entry point can check data
before TensorFlow loads)."""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from common.errors import ConfigError, DataError

# live (B, B, B) float32 tensors of a training step (weights, hinges, their gradients; measured on
# CPU: 0.6 GB more at B = 256 than at 128), in bytes per element
TRIPLET_BYTES_PER_ELEMENT = 40


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


def physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_batch_memory(batch_size: int, n_train: int, memory: Optional[int] = None) -> None:
    """The vectorised triplet loss holds (B, B, B) tensors: refuse a batch whose step cannot fit in
    memory (default: this machine's; it would be killed without a word) and name the largest that fits."""
    memory = memory or physical_memory()
    b = min(batch_size, n_train)
    need = b ** 3 * TRIPLET_BYTES_PER_ELEMENT
    if need > 0.75 * memory:
        fits = int((0.75 * memory / TRIPLET_BYTES_PER_ELEMENT) ** (1 / 3))
        raise ConfigError(f"--batch_size {batch_size}: the triplet loss builds (B, B, B) tensors, about "
                          f"{need / 2**30:.0f} GiB at B = {b}, and this machine has {memory / 2**30:.0f} GiB; "
                          f"use at most about {fits} (the release's is 32)")
