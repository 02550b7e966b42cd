"""ACMR settings and the two presets (spec acmr.md §4, §9).

`release`: what the demo code executes — only the embedding update (projectors) and the
modality-classifier update run, so the reversed gradient never reaches the projectors and the
label classifier keeps its random initial weights; file order, drop-remainder, evaluation on
the batches that fit (640 of 693 Wikipedia pairs).
`paper`: the method as published — one optimiser on L_emb + L_adv over all networks (the
projectors ascend l * L_adv through the reversal layer), label classifier trained, batches
reshuffled each epoch, evaluation on every test pair.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from common.errors import ConfigError

# embedding-loss weights per release file: (label, similar, dissimilar) or (label, triplet)
WEIGHTS = {"simple_wiki": (100.0, 1.0, 0.02), "simple_nuswide": (50.0, 1.0, 0.2), "triplet_wiki": (100.0, 1.0)}
PRESETS = {
    "release": dict(adv_to_projectors=False, train_label_classifier=False, shuffle=False, eval_full_test=False),
    "paper": dict(adv_to_projectors=True, train_label_classifier=True, shuffle=True, eval_full_test=True),
}
RELEASE_EPOCHS = {"simple_wiki": 200, "triplet_wiki": 50, "simple_nuswide": 50}


@dataclasses.dataclass
class ACMRConfig:
    variant: str = "simple"          # simple | triplet
    arch: str = "wiki"               # wiki | nuswide (hidden widths and loss weights)
    preset: str = "release"
    epochs: Optional[int] = None     # None: the release's count for variant/arch
    batch_size: int = 64
    lr: float = 1e-4
    beta1: float = 0.5
    beta2: float = 0.999
    epsilon: float = 1e-8            # TF1 Adam default (Keras: 1e-7)
    emb_dim: int = 40
    w_label: Optional[float] = None  # None: the release file's weight
    w_sim: Optional[float] = None
    w_dis: Optional[float] = None
    margin: float = 0.1
    alpha: float = 5.0
    top_k: int = 50
    drop_remainder: bool = True      # both presets: the release's static batch of 64
    neg_tie_fix: bool = False
    # preset switches (None: take the preset's value)
    adv_to_projectors: Optional[bool] = None
    train_label_classifier: Optional[bool] = None
    shuffle: Optional[bool] = None
    eval_full_test: Optional[bool] = None
    seed: int = 0

    @property
    def key(self) -> str:
        return f"{self.variant}_{self.arch}"

    def resolve(self) -> "ACMRConfig":
        """Fill every None from the preset and the release file this variant/arch comes from."""
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}")
        if self.key not in WEIGHTS:
            raise ValueError(f"the release has no {self.variant} variant for {self.arch} "
                             f"(files: {', '.join(sorted(WEIGHTS))})")
        cfg = dataclasses.replace(self)
        for name, value in PRESETS[self.preset].items():
            if getattr(cfg, name) is None:
                setattr(cfg, name, value)
        weights = WEIGHTS[self.key]
        cfg.w_label = weights[0] if cfg.w_label is None else cfg.w_label
        cfg.w_sim = weights[1] if cfg.w_sim is None else cfg.w_sim  # triplet: weight of L_trip
        if self.variant == "simple":
            cfg.w_dis = weights[2] if cfg.w_dis is None else cfg.w_dis
        cfg.epochs = RELEASE_EPOCHS[self.key] if cfg.epochs is None else cfg.epochs
        return cfg

    def check_split_sizes(self, n_train: int, n_test: Optional[int] = None, where: str = "") -> None:
        """The release trains on whole batches (with drop_remainder) and evaluates whole batches
        only (without eval_full_test): a split smaller than one batch gives it nothing to do."""
        where = f"{where}: " if where else ""
        if self.drop_remainder and n_train < self.batch_size:
            raise ConfigError(f"{where}the train split has {n_train} pairs, fewer than one batch of "
                              f"{self.batch_size}; lower --batch_size or pass --nodrop_remainder")
        if n_test is not None and not self.eval_full_test and n_test < self.batch_size:
            raise ConfigError(f"{where}the test split has {n_test} pairs, fewer than one batch of {self.batch_size} "
                              "(the release evaluates whole batches only); lower --batch_size or pass --eval_full_test")
