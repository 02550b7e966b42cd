"""JFSE / CFSA settings; defaults are the release's (spec jfse.md §4)."""

from __future__ import annotations

import dataclasses

# spec §3.5: the release's loss weights
RELEASE_WEIGHTS = dict(w_cyc_g=0.1, w_adv_g=0.01, w_align_real=1e-4, w_adv_real=0.01, w_syn_r=0.01,
                       w_adv_syn_r=0.01, w_align_syn=1e-4)
CFSA_ADVERSARY = ("w_adv_g", "w_adv_real", "w_adv_syn_r")  # the weights --method cfsa sets to 0
SYNTHETIC_EPOCHS = 20  # demo-sized default on the synthetic data; files default to the release's 500


@dataclasses.dataclass
class JFSEConfig:
    method: str = "jfse"            # jfse | cfsa
    align: str = "cmpm"             # cmpm | cmmd | cmca (alignment slots only)
    epochs: int = 500               # the release's hard-coded loop
    batch_size: int = 64
    n_critic: int = 5
    lr: float = 1e-4
    beta1: float = 0.5
    beta2: float = 0.999
    epsilon: float = 1e-8           # TF1 Adam default (Keras: 1e-7)
    gp_lambda: float = 10.0
    noise_dim: int = 300
    hidden: int = 4096
    eval_every: int = 2
    norm: str = "batch_minmax"      # release: per-batch min-max of features and class embeddings
    shuffle: bool = False           # release: file order every epoch
    eval_variants: str = "all"      # all (release's four) | minmax
    train_modality_classifier: bool = True
    synthesize_unseen: bool = False  # extension: also synthesise unseen-class features
    seed: int = 0
    weights: dict = dataclasses.field(default_factory=lambda: dict(RELEASE_WEIGHTS))

    def for_method(self) -> "JFSEConfig":
        """CFSA preset (spec §1): CMPM, adversary weights 0 and the modality classifier idle."""
        if self.method == "cfsa":
            self.align = "cmpm"
            self.train_modality_classifier = False
            for key in CFSA_ADVERSARY:
                self.weights[key] = 0.0
        return self
