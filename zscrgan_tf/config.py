"""ZSCRGAN settings: the release's 13 argparse flags, its hard-coded constants, and the switches
whose defaults keep its behaviour (spec zscrgan.md §4, §9)."""

from __future__ import annotations

import dataclasses

RELEASE_NUMBER_EXAMPLE = 531000  # hard-coded in the release: cycles per "epoch" = int(531000 / batch_size)
SYNTHETIC_MAX_CYCLES = 5


@dataclasses.dataclass
class ZSCRGANConfig:
    # the release's 13 flags (argparse defaults) ...
    batch_size: int = 32
    gf_dim: int = 2048
    df_dim: int = 1024
    embed_dim: int = 1024
    CSEM_lr: float = 2e-3
    generator_lr: float = 2e-4
    discriminator_lr: float = 2e-4
    kl_div_coefficient: float = 1.0
    mm_reg_coeff: float = 2.0
    z_dim: int = 256
    clip_val: float = 0.01
    # ... its hard-coded constants ...
    e_iters: int = 100
    m_iters: int = 100
    n_critic: int = 5
    retrieve_k: int = 50
    # ... and switches whose defaults keep the release (spec §9)
    kl_form: str = "zscrgan"
    mm_hinge: bool = False
    mm_margin: float = 2.0
    csem_per_sample: bool = False
    train_text: str = "first"
    pad_partial_batches: bool = True
    eval_mode: str = "sample"
    rmsprop_init: str = "ones"
    seed: int = 0
