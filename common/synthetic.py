"""Deterministic synthetic cross-modal data with real class structure (the embedded default).

A sample of class y has a latent z = e_y + latent_noise * N(0, I), where e_y is the class
embedding. Images are ReLU(z A_v + b_v) + noise and texts tanh(z A_t + b_t) + noise with two
independent fixed random maps, so:
- supervised retrieval is learnable (classes are clusters in both modalities);
- the two modalities are not linearly related (a method must learn two mappings);
- an unseen class is reachable only through its class embedding: its features come from
  the same maps applied near e_y, so a model that regresses features onto the embedding
  space transfers, and nothing else about the class is in the training split.
Class embeddings are rank-`class_rank` (default C // 3) mixtures of random attribute
vectors, like word vectors sharing semantic directions. Multi-label samples (1-3 labels)
use the mean of their labels' embeddings as the centre.
Chance level is exact: `common.metrics.expected_random_map`.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from common.dataset import CrossModalDataset, Split

SIZES = {
    # classes, pairs per class (train / val / test), feature dims, class-embedding dim
    "small": dict(num_classes=10, train_per_class=40, val_per_class=10, test_per_class=20,
                  image_dim=128, text_dim=64, emb_dim=32),
    "medium": dict(num_classes=20, train_per_class=100, val_per_class=20, test_per_class=40,
                   image_dim=512, text_dim=300, emb_dim=300),
    "large": dict(num_classes=50, train_per_class=400, val_per_class=50, test_per_class=100,
                  image_dim=4096, text_dim=300, emb_dim=300),
}


def make_synthetic(size: str = "small", seed: int = 0, multilabel: bool = False,
                   num_unseen: Optional[int] = None, latent_noise: float = 0.6,
                   feature_noise: float = 0.3, **overrides) -> CrossModalDataset:
    """Build the dataset; identical for identical arguments (one `default_rng(seed)`).

    `num_unseen` defaults to half the classes (single-label) and 0 (multi-label).
    `overrides` replace entries of `SIZES[size]` (e.g. `image_dim=4096`).
    """
    if size not in SIZES:
        raise ValueError(f"unknown synthetic size {size!r}; choose from {sorted(SIZES)}")
    cfg = dict(SIZES[size], **overrides)
    rng = np.random.default_rng(seed)
    c, e = cfg["num_classes"], cfg["emb_dim"]
    # class embeddings share a low-rank attribute structure (as word vectors do), so the seen
    # classes span the directions the unseen ones need
    rank = cfg.get("class_rank") or max(2, c // 3)
    attributes = rng.standard_normal((c, rank))
    class_emb = (attributes @ rng.standard_normal((rank, e)) / np.sqrt(rank)).astype(np.float32)
    maps = {
        "image": (rng.standard_normal((e, cfg["image_dim"])) / np.sqrt(e),
                  0.5 * rng.standard_normal(cfg["image_dim"])),
        "text": (rng.standard_normal((e, cfg["text_dim"])) / np.sqrt(e),
                 0.5 * rng.standard_normal(cfg["text_dim"])),
    }

    def features(centres):
        z = centres + latent_noise * rng.standard_normal(centres.shape)
        (a_v, b_v), (a_t, b_t) = maps["image"], maps["text"]
        image = np.maximum(z @ a_v + b_v, 0.0)
        text = np.tanh(z @ a_t + b_t)
        image = image + feature_noise * rng.standard_normal(image.shape)
        text = text + feature_noise * rng.standard_normal(text.shape)
        return image.astype(np.float32), text.astype(np.float32)

    def split(per_class):
        n = per_class * c
        if multilabel:
            labels = np.zeros((n, c), np.uint8)
            counts = rng.integers(1, 4, size=n)
            for i, k in enumerate(counts):
                labels[i, rng.choice(c, size=k, replace=False)] = 1
            centres = (labels @ class_emb) / labels.sum(axis=1, keepdims=True)
        else:
            labels = rng.permutation(np.repeat(np.arange(c), per_class)).astype(np.int64)
            centres = class_emb[labels]
        image, text = features(centres)
        return Split(image, text, labels)

    splits = {name: split(cfg[f"{name}_per_class"]) for name in ("train", "val", "test")}
    if num_unseen is None:
        num_unseen = 0 if multilabel else c // 2
    unseen = np.sort(rng.choice(c, size=num_unseen, replace=False)) if num_unseen else None
    ds = CrossModalDataset(
        name=f"synthetic-{size}{'-multilabel' if multilabel else ''}",
        num_classes=c, class_names=[f"class_{k}" for k in range(c)], class_embeddings=class_emb,
        unseen_classes=unseen, seen_classes=None if unseen is None else np.setdiff1d(np.arange(c), unseen),
        source=f"synthetic(size={size}, seed={seed}, multilabel={multilabel})", **splits)
    ds.extras["generator"] = dict(cfg, seed=seed, latent_noise=latent_noise,
                                  feature_noise=feature_noise, multilabel=multilabel)
    return ds.validate()


def make_hashing_synthetic(seed: int = 0, num_labels: int = 24, image_dim: int = 64, text_dim: int = 96,
                           sizes=(("train", 1000), ("val", 200), ("test", 200), ("database", 2000)),
                           noise: float = 0.5) -> CrossModalDataset:
    """The hashing spec's multi-label set (cmhash.md §8a, §10.9): 1-3 labels per sample,
    features = labels @ W_m + noise * N(0, 1) with an independent W_m per modality; test
    items are the queries, `database` the retrieval gallery (train is drawn apart from it)."""
    rng = np.random.default_rng(seed)
    maps = {m: rng.standard_normal((num_labels, d)) for m, d in (("image", image_dim), ("text", text_dim))}
    splits = {}
    for name, n in sizes:
        labels = np.zeros((n, num_labels), np.uint8)
        for i, k in enumerate(rng.integers(1, 4, size=n)):
            labels[i, rng.choice(num_labels, size=k, replace=False)] = 1
        feats = [(labels @ maps[m] + noise * rng.standard_normal((n, maps[m].shape[1]))).astype(np.float32)
                 for m in ("image", "text")]
        splits[name] = Split(feats[0], feats[1], labels)
    ds = CrossModalDataset(name="synthetic-hashing", num_classes=num_labels,
                           class_names=[f"label_{k}" for k in range(num_labels)],
                           source=f"synthetic-hashing(seed={seed})", **splits)
    return ds.validate()
