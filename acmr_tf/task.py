"""ACMR's training step and evaluation (spec acmr.md §4, §6), and its task for the run driver.

One compiled step per batch. Release preset: one forward pass, the embedding loss updates the
projectors and the modality loss updates the modality classifier (two Adam instances, both
gradients from pre-update weights). Paper preset: one Adam on L_emb + L_adv over every network,
so the projectors receive -l * dL_adv through the reversal layer. Losses are logged from a
second, post-update forward pass on the same batch, as the release printed them.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from acmr_tf import losses
from acmr_tf.config import ACMRConfig
from acmr_tf.model import ACMRNetworks, Projector
from common import distribute, driver, metrics, pipelines, training
from common.dataset import Split
from common.errors import ConfigError
from common.layers import float32, grl_schedule

LOG_FIELDS = {"simple": ("emb_loss", "domain_loss", "label_loss", "similar_loss", "dissimilar_loss"),
              "triplet": ("emb_loss", "domain_loss", "label_loss", "triplet_loss")}


class ACMRTrainer:
    def __init__(self, cfg: ACMRConfig, image_dim: int, text_dim: int, num_classes: int,
                 replicas: distribute.Replicas | None = None):
        self.cfg = cfg = cfg.resolve()
        self.num_classes = num_classes
        self.replicas = replicas or distribute.Replicas()
        extra = ("label_classifier",) if cfg.train_label_classifier else ()
        if cfg.adv_to_projectors:  # the release's unused `total` op
            self.var_groups = {"total": ("projectors", "modality_classifier") + extra}
        else:
            self.var_groups = {"emb": ("projectors",) + extra, "domain": ("modality_classifier",)}
        self.optimizers = {}
        with self.replicas.scope():
            self.nets = ACMRNetworks(image_dim, text_dim, num_classes, cfg.emb_dim, cfg.arch)
            for name, groups in self.var_groups.items():
                opt = keras.optimizers.Adam(cfg.lr, beta_1=cfg.beta1, beta_2=cfg.beta2, epsilon=cfg.epsilon)
                opt.build(self.nets.variables(*groups))
                self.optimizers[name] = opt
            self.grl_scale = tf.Variable(0.0, trainable=False, name="grl_scale")
        self.train_step = training.graph_function(self._train_step, reduce_retracing=True)
        self._embed_image = training.graph_function(self.nets.image_projector, reduce_retracing=True)
        self._embed_text = training.graph_function(self.nets.text_projector, reduce_retracing=True)

    def losses(self, image, text, labels) -> dict:
        """Every loss term of one (global) batch (§3); the projectors run on this replica's rows."""
        cfg, n = self.cfg, self.nets
        e_v = distribute.per_row(n.image_projector, image)
        e_t = distribute.per_row(n.text_projector, text)
        y = tf.one_hot(labels, self.num_classes)  # fixed depth (the release's LabelBinarizer could not)
        lc = lambda e: float32(n.label_classifier(e))  # noqa: E731  (a bare Dense: its logits to float32)
        out = {"label_loss": losses.label_loss(lc(e_v), lc(e_t), y)}
        if cfg.variant == "simple":
            out["similar_loss"] = losses.similar_loss(e_v, e_t)
            out["dissimilar_loss"] = losses.dissimilar_loss(e_v, e_t, labels)
            out["emb_loss"] = (cfg.w_label * out["label_loss"] + cfg.w_sim * out["similar_loss"]
                               + cfg.w_dis * out["dissimilar_loss"])
        else:
            neg_txt, neg_img = losses.mine_negatives(image, text, labels, cfg.neg_tie_fix)
            out["triplet_loss"] = losses.triplet_loss(e_v, e_t, tf.gather(e_t, neg_txt), tf.gather(e_v, neg_img),
                                                      cfg.margin, cfg.alpha)
            out["emb_loss"] = cfg.w_label * out["label_loss"] + cfg.w_sim * out["triplet_loss"]
        scale = self.grl_scale
        out["domain_loss"] = losses.modality_loss(n.modality_classifier(e_v, scale), n.modality_classifier(e_t, scale))
        return out

    def _train_step(self, image, text, labels):
        return self.replicas.run(self._replica_step, image, text, labels)

    def _replica_step(self, image, text, labels):
        nets = self.nets.models().values()
        with tf.GradientTape(persistent=True) as tape, distribute.cast_once(*nets):
            terms = self.losses(image, text, labels)
            objectives = {"total": terms["emb_loss"] + terms["domain_loss"],
                          "emb": terms["emb_loss"], "domain": terms["domain_loss"]}
        grads = {}
        for name, groups in self.var_groups.items():  # all gradients before any update
            variables = self.nets.variables(*groups)
            grads[name] = (distribute.replica_share(tape.gradient(objectives[name], variables)), variables)
        del tape
        for name, (g, variables) in grads.items():
            distribute.apply_gradients(self.optimizers[name], zip(g, variables))
        with distribute.cast_once(*nets):
            return self.losses(image, text, labels)  # post-update values, as the release logged

    # ------------------------------------------------------------------ evaluation

    def embed(self, image: np.ndarray, text: np.ndarray, batch: int = 4096):
        return training.batched(self._embed_image, image, batch), training.batched(self._embed_text, text, batch)

    def evaluate(self, split: Split, embeddings: bool = False):
        """The release's Euclidean mAP@top_k on the evaluated pairs (640 of 693 on Wikipedia unless
        eval_full_test) and the contract's cosine mAP@all on every test pair (and the embeddings)."""
        e_v, e_t = self.embed(split.image, split.text)
        n = len(split) if self.cfg.eval_full_test else len(split) - len(split) % self.cfg.batch_size
        if n == 0:
            raise ConfigError(f"the test split has {len(split)} pairs, fewer than one batch of "
                              f"{self.cfg.batch_size}; pass --eval_full_test")
        head = metrics.acmr_map(e_v[:n], e_t[:n], split.labels[:n], k=self.cfg.top_k)
        out = {f"i2t_map_at_{self.cfg.top_k}": head["i2t"], f"t2i_map_at_{self.cfg.top_k}": head["t2i"],
               "evaluated_pairs": int(n)}
        out.update(metrics.cross_modal_map_all(e_v, e_t, split.labels, split.labels))
        return (out, (e_v, e_t)) if embeddings else out

    # ------------------------------------------------------------------ loop

    def make_runner(self, train: Split, steps_per_execution: int = 0, jit_compile: bool = False):
        """The epoch loop in the graph (`training.EpochRunner`): the release's batches (file
        order unless --shuffle, last partial batch dropped), losses per batch."""
        cfg = self.cfg
        cfg.check_split_sizes(len(train))
        return training.EpochRunner(self._train_step, pipelines.split_tensors(train), ("image", "text", "label"),
                                    LOG_FIELDS[cfg.variant], cfg.batch_size, cfg.shuffle, cfg.seed,
                                    cfg.drop_remainder, steps_per_execution, jit_compile)


class ACMRTask(driver.Task):
    """ACMR for `common.driver.fit`: an in-graph epoch, then the release's evaluation on the test split."""

    def __init__(self, trainer: ACMRTrainer, train: Split, test: Split, steps_per_execution: int = 0,
                 jit_compile: bool = False, val: Split | None = None):
        self.trainer, self.test, self.val, self.replicas = trainer, test, val, trainer.replicas
        self.runner = trainer.make_runner(train, steps_per_execution, jit_compile)
        self.steps_per_unit = self.runner.steps
        self.part_way = self.runner.resumes_part_way  # with --steps_per_execution (its step draws nothing random)
        self.num_units = trainer.cfg.epochs
        k = trainer.cfg.top_k
        self.headline = (f"test/i2t_map_at_{k}", f"test/t2i_map_at_{k}")
        self.key_losses = ("emb_loss", "domain_loss")

    def models(self) -> dict:
        return self.trainer.nets.models()

    def checkpoint_objects(self) -> dict:
        t = self.trainer
        objects = dict(self.models(), grl=t.grl_scale)
        objects.update({f"opt_{k}": (o, t.nets.variables(*t.var_groups[k])) for k, o in t.optimizers.items()})
        return objects

    def encoders(self) -> dict:
        """`common.export.write_spec` arguments: the two projectors."""
        nets = self.trainer.nets
        widths = {m: [layer.units for layer in getattr(nets, f"{m}_projector").dense] for m in ("image", "text")}
        return dict(method=f"acmr_{self.trainer.cfg.variant}",
                    models={f"{m}_projector": (Projector, {"widths": widths[m], "input_dim": nets.dims[m]})
                            for m in ("image", "text")},
                    image={"dim": nets.dims["image"], "model": "image_projector"},
                    text={"dim": nets.dims["text"], "model": "text_projector"})

    def train_unit(self, epoch: int, on_block=None, **resume) -> dict:
        self.trainer.grl_scale.assign(grl_schedule(epoch, self.num_units))
        return self.runner.run_epoch(epoch, on_block=on_block, **resume)

    def evaluate(self, epoch: int) -> driver.Evaluation:
        result, (e_v, e_t) = self.trainer.evaluate(self.test, embeddings=True)
        labels = self.test.labels
        record = {"epoch": epoch, "grl_lambda": float(self.trainer.grl_scale.numpy()), "test": result}
        scalars = {f"test/{k}": v for k, v in result.items()}
        if self.val is not None:  # monitored only: the release selects no epoch, it reports the last
            record["val"] = metrics.cross_modal_map_all(*self.trainer.embed(self.val.image, self.val.text),
                                                        self.val.labels, self.val.labels)
            scalars.update({f"val/{k}": v for k, v in record["val"].items()})
        return driver.Evaluation(record, scalars,
                                 {"i2t": (e_v, e_t, labels, labels, "cosine"),
                                  "t2i": (e_t, e_v, labels, labels, "cosine")})
