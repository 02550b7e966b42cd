"""ACMR training step, loop and entry point (spec acmr.md §4, §6).

    python -m acmr_tf.train --variant simple --dataset synthetic
    python -m acmr_tf.train --variant triplet --dataset wikipedia --data_dir data/wikipedia_dataset
    python -m acmr_tf.train --dataset nuswide --data_dir data/nuswide --preset paper

One compiled step per batch. Release preset: one forward pass, the embedding loss updates the
projectors and the modality loss updates the modality classifier (two Adam instances, both
gradients from pre-update weights). Paper preset: one Adam on L_emb + L_adv over every network,
so the projectors receive -l * dL_adv through the reversal layer. Losses are logged from a
second, post-update forward pass on the same batch, as the release printed them.
"""

from __future__ import annotations

import dataclasses
import os
import time

import keras
import numpy as np
import tensorflow as tf
from absl import flags

from acmr_tf import losses
from acmr_tf.config import ACMRConfig
from acmr_tf.model import ACMRNetworks, Projector
from common import distribute, export, metrics, pipelines, run, training
from common.dataset import Split
from common.errors import ConfigError, DivergenceError
from common.layers import grl_schedule

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
        self.train_step = tf.function(self._train_step, reduce_retracing=True)
        self._embed_image = tf.function(self.nets.image_projector, reduce_retracing=True)
        self._embed_text = tf.function(self.nets.text_projector, reduce_retracing=True)

    def losses(self, image, text, labels) -> dict:
        """Every loss term of one (global) batch (§3); the projectors run on this replica's rows."""
        cfg, n = self.cfg, self.nets
        e_v = distribute.per_row(n.image_projector, image)
        e_t = distribute.per_row(n.text_projector, text)
        y = tf.one_hot(labels, self.num_classes)  # fixed depth (the release's LabelBinarizer could not)
        out = {"label_loss": losses.label_loss(n.label_classifier(e_v), n.label_classifier(e_t), y)}
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
        with tf.GradientTape(persistent=True) as tape:
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
        return self.losses(image, text, labels)  # post-update values, as the release logged

    # ------------------------------------------------------------------ evaluation

    def embed(self, image: np.ndarray, text: np.ndarray, batch: int = 4096):
        return training.batched(self._embed_image, image, batch), training.batched(self._embed_text, text, batch)

    def evaluate(self, split: Split) -> dict:
        """The release's Euclidean mAP@top_k on the evaluated pairs (640 of 693 on Wikipedia unless
        eval_full_test) and the contract's cosine mAP@all on every test pair."""
        e_v, e_t = self.embed(split.image, split.text)
        n = len(split) if self.cfg.eval_full_test else len(split) - len(split) % self.cfg.batch_size
        if n == 0:
            raise ConfigError(f"the test split has {len(split)} pairs, fewer than one batch of "
                              f"{self.cfg.batch_size}; pass --eval_full_test")
        head = metrics.acmr_map(e_v[:n], e_t[:n], split.labels[:n], k=self.cfg.top_k)
        out = {f"i2t_map_at_{self.cfg.top_k}": head["i2t"], f"t2i_map_at_{self.cfg.top_k}": head["t2i"],
               "evaluated_pairs": int(n)}
        out.update(metrics.cross_modal_map_all(e_v, e_t, split.labels, split.labels))
        return out

    # ------------------------------------------------------------------ loop

    def make_runner(self, train: Split, steps_per_execution: int = 0, jit_compile: bool = False):
        """The epoch loop in the graph (`training.EpochRunner`): the release's batches (file
        order unless --shuffle, last partial batch dropped), losses per batch."""
        cfg = self.cfg
        if len(train) < cfg.batch_size and cfg.drop_remainder:
            raise ConfigError(f"the train split has {len(train)} pairs, fewer than one batch of {cfg.batch_size}")
        return training.EpochRunner(self._train_step, pipelines.split_tensors(train), ("image", "text", "label"),
                                    LOG_FIELDS[cfg.variant], cfg.batch_size, cfg.shuffle, cfg.seed,
                                    cfg.drop_remainder, steps_per_execution, jit_compile)


# ---------------------------------------------------------------------- entry point

def define_flags():
    """Entry-point flags; defined only when run as a program, so tests can import the trainer."""
    run.define_run_flags(default_output_dir="runs/acmr")
    flags.DEFINE_enum("variant", "simple", ["simple", "triplet"], "simple (contrastive) or triplet release file.")
    flags.DEFINE_enum("preset", "release", ["release", "paper"], "release: what the demo code trains; paper: the published method.")
    flags.DEFINE_enum("arch", None, ["wiki", "nuswide"], "Hidden widths and loss weights (default: nuswide for --dataset nuswide, else wiki).")
    flags.DEFINE_integer("batch_size", 64, "Batch size (release 64).")
    flags.DEFINE_float("lr", 1e-4, "Adam learning rate (release 1e-4).")
    flags.DEFINE_float("beta1", 0.5, "Adam beta_1 (release 0.5).")
    flags.DEFINE_integer("emb_dim", 40, "Common-space width (release 40).")
    flags.DEFINE_float("w_label", None, "Label-loss weight (release: 100 wiki, 50 nuswide).")
    flags.DEFINE_float("w_sim", None, "Similar-loss (simple) or triplet-loss (triplet) weight (release 1).")
    flags.DEFINE_float("w_dis", None, "Dissimilar-loss weight (release: 0.02 wiki, 0.2 nuswide).")
    flags.DEFINE_float("margin", 0.1, "Triplet margin mu (release 0.1).")
    flags.DEFINE_float("alpha", 5.0, "Triplet weight alpha of the positive term (release 5).")
    flags.DEFINE_integer("top_k", 50, "K of the release's mAP@K (release 50).")
    flags.DEFINE_bool("adv_to_projectors", None, "Train with L_emb + L_adv through the GRL (preset: release off, paper on).")
    flags.DEFINE_bool("train_label_classifier", None, "Train the label classifier (preset: release off, paper on).")
    flags.DEFINE_bool("shuffle", None, "Reshuffle train pairs each epoch (preset: release off, paper on).")
    flags.DEFINE_bool("eval_full_test", None, "Evaluate all test pairs, not only full batches (preset: release off, paper on).")
    flags.DEFINE_bool("drop_remainder", True, "Drop the last partial train batch (release: on).")
    flags.DEFINE_bool("neg_tie_fix", False, "Triplet: mine negatives among different-class items only (release: off).")
    flags.DEFINE_integer("log_every", 1, "Print the loss line every N batches (release: every batch).")
    run.define_execution_flags()


FLAGS = flags.FLAGS


def make_config(dataset: str) -> ACMRConfig:
    arch = FLAGS.arch or ("nuswide" if dataset == "nuswide" else "wiki")
    fields = {f.name for f in dataclasses.fields(ACMRConfig)}
    values = {k: getattr(FLAGS, k) for k in fields if k in FLAGS and k not in ("arch", "seed", "epochs")}
    try:
        return ACMRConfig(arch=arch, epochs=FLAGS.epochs, seed=FLAGS.seed, **values).resolve()
    except ValueError as e:
        raise ConfigError(str(e)) from None


def main(argv):
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments {argv[1:]}")
    from common.datasets import load_dataset

    run.require_positive("epochs", "batch_size", "emb_dim", "top_k", "log_every")
    training.set_seed(FLAGS.seed)
    cfg = make_config(FLAGS.dataset)
    ds = load_dataset(FLAGS.dataset, FLAGS.data_dir, seed=FLAGS.seed)
    if ds.multilabel:
        raise ConfigError(f"{ds.name}: ACMR uses single-label classes (its mask and label loss); got multi-hot labels")
    train, test = ds.train, ds.test
    print(f"{ds.name}: {len(train)} train / {len(test)} test pairs, dims {ds.image_dim}/{ds.text_dim}, "
          f"labels {int(train.labels.min())}..{int(train.labels.max())} (0-based), {ds.num_classes} classes; "
          f"ACMR {cfg.variant} ({cfg.arch} widths), preset {cfg.preset}, {cfg.epochs} epochs")
    trainer = ACMRTrainer(cfg, ds.image_dim, ds.text_dim, ds.num_classes, replicas=run.replicas())
    chief = trainer.replicas.is_chief
    runner = trainer.make_runner(train, FLAGS.steps_per_execution, run.jit_compile(trainer.replicas))
    out_dir = FLAGS.output_dir
    widths = {m: [layer.units for layer in getattr(trainer.nets, f"{m}_projector").dense] for m in ("image", "text")}
    if chief:
        export.write_spec(out_dir, f"acmr_{cfg.variant}",
                          {f"{m}_projector": (Projector, {"widths": widths[m]}) for m in ("image", "text")},
                          image={"dim": ds.image_dim, "model": "image_projector"},
                          text={"dim": ds.text_dim, "model": "text_projector"})
    objects = {m.name: m for group in trainer.nets.groups.values() for m in group}
    objects.update({f"opt_{k}": (o, trainer.nets.variables(*trainer.var_groups[k])) for k, o in trainer.optimizers.items()})
    state = training.RunState(out_dir, replicas=trainer.replicas, grl=trainer.grl_scale, **objects)
    if state.resumed:
        print(f"resumed after epoch {state.start_epoch - 1}")
    writer = training.SummaryWriter(run.tensorboard_dir(out_dir), trainer.replicas)
    steps = runner.steps
    fields = LOG_FIELDS[cfg.variant]
    start, first_epoch = time.time(), state.start_epoch

    def show(epoch, first, values):
        """The release's per-batch loss lines, printed as each compiled block returns."""
        bad = training.first_nonfinite(values)
        if bad is not None:
            raise DivergenceError(f"non-finite loss at epoch {epoch} batch {first + bad}: "
                                  f"{ {k: float(values[k][bad]) for k in fields} }; the last good checkpoint "
                                  "and results are kept")
        for j in range(len(values[fields[0]])):
            i = first + j
            if i % FLAGS.log_every == 0 or i == steps - 1:
                print(f"Epoch: [{epoch:2d}][{i:4d}/{steps:4d}] time: {time.time() - start:.4f}, "
                      + ", ".join(f"{k}: {values[k][j]:.8f}" for k in fields), flush=True)

    for epoch in range(first_epoch, cfg.epochs):
        trainer.grl_scale.assign(grl_schedule(epoch, cfg.epochs))
        values = runner.run_epoch(epoch, on_block=lambda first, v: show(epoch, first, v))  # noqa: B023
        logs = {k: float(v[-1]) for k, v in values.items()}
        record = {"epoch": epoch, "grl_lambda": float(trainer.grl_scale.numpy()), "test": trainer.evaluate(test)}
        writer.scalars({**{f"loss/{k}": v for k, v in logs.items()},
                        **{f"test/{k}": v for k, v in record["test"].items()}}, epoch)
        state.record(record)
    if not state.history:
        raise ConfigError(f"{out_dir} already holds a finished run with no history")
    spe = (time.time() - start) / max(cfg.epochs - first_epoch, 1)
    t0 = time.time()
    final = trainer.evaluate(test)
    print(f"[Eval] transformed test features in {time.time() - t0:.4f}")
    k = cfg.top_k
    print(f"[Eval - txt2img] mAP: {final[f't2i_map_at_{k}']:.6f} (Euclidean mAP@{k} over {final['evaluated_pairs']} "
          f"test pairs) in {time.time() - t0:.4f}s")
    print(f"[Eval - img2txt] mAP: {final[f'i2t_map_at_{k}']:.6f} (Euclidean mAP@{k} over {final['evaluated_pairs']} "
          f"test pairs) in {time.time() - t0:.4f}s")
    print(f"cosine mAP@all over all {len(test)} test pairs: i2t {final['i2t_map_all']:.4f}  t2i {final['t2i_map_all']:.4f}")
    chance = metrics.expected_random_map(test.labels, test.labels)
    if not chief:
        return
    run.write_results(out_dir, dataset=ds.name, method=f"acmr_{cfg.variant}", seed=FLAGS.seed,
                      flag_dict=run.flag_values(), metrics={**final, "chance_map_all": chance,
                                                            "seconds_per_epoch": spe},
                      preset=cfg.preset, config=dataclasses.asdict(cfg),
                      note=(f"i2t/t2i_map_at_{k}: the release's metric (Euclidean, AP@{k} normalised by the "
                            f"relevant items in the top {k}, {final['evaluated_pairs']} test pairs); "
                            "*_map_all: cosine mAP@all on every test pair (comparable across ports)"))
    print(f"results in {os.path.join(out_dir, 'results.json')}")


if __name__ == "__main__":
    define_flags()
    run.run_main(main)
