"""Triplet-ranking cross-modal hashing, feature-level mode (spec cmhash.md §3, §4, §6, §8a).

    python -m cmhash_tf.train                                   # synthetic multi-label, 32 bits
    python -m cmhash_tf.train --bits 16,32,64 --dataset iapr --data_dir data/iapr
    python -m cmhash_tf.train --dataset features --data_dir DIR # any feature widths

Per bit length: one model in `<output_dir>/bits_<K>/` (checkpoints, history, TensorBoard), and
one `results.json` in `<output_dir>` with `i2t_map` / `t2i_map` per bit length. Queries are the
test split, the database is the dataset's retrieval split (or the train split where the data
has none). Model selection uses a validation split (the dataset's, else a seeded hold-out of
the train split saved in `splits.npz`); `--select_on_test` reproduces the release, which
reported a test-set number, and is labelled as such.
"""

from __future__ import annotations

import dataclasses
import os
import time

import keras
import numpy as np
import tensorflow as tf
from absl import flags

from cmhash_tf import losses
from cmhash_tf.model import CMHashNetworks, binarize
from common import io, metrics, pipelines, run, training
from common.dataset import Split
from common.errors import ConfigError


@dataclasses.dataclass
class CMHashConfig:
    bits: int = 32
    margin: float | None = None      # None: 12 * bits / 32 (the release's 12 at 32 bits)
    mining: str = "pivot"            # pivot (release) | anchor
    epochs: int = 50                 # feature mode (release, end to end: 301)
    batch_size: int = 32
    lr: float = 1e-3                 # feature mode: frozen features need more than the release's 1e-5
    image_lr: float | None = None    # two optimisers (the first commit's variant) when either is set
    text_lr: float | None = None
    weight_decay: float = 5e-4       # coupled, as PyTorch's Adam: g + wd * theta
    hidden: int | None = None
    eval_every: int = 10
    seed: int = 0

    @property
    def margin_value(self) -> float:
        return 12.0 * self.bits / 32.0 if self.margin is None else self.margin


class CMHashTrainer:
    def __init__(self, cfg: CMHashConfig, image_dim: int, text_dim: int):
        self.cfg = cfg
        self.nets = CMHashNetworks(image_dim, text_dim, cfg.bits, cfg.hidden)
        if cfg.image_lr is None and cfg.text_lr is None:
            self.var_groups = {"joint": ("image", "text")}
            rates = {"joint": cfg.lr}
        else:
            self.var_groups = {"image": ("image",), "text": ("text",)}
            rates = {"image": cfg.image_lr or cfg.lr, "text": cfg.text_lr or cfg.lr}
        self.optimizers = {}
        for name, groups in self.var_groups.items():
            opt = keras.optimizers.Adam(rates[name], beta_1=0.9, beta_2=0.999, epsilon=1e-8)
            opt.build(self.nets.variables(*groups))
            self.optimizers[name] = opt
        self.train_step = tf.function(self._train_step, reduce_retracing=True)
        self._image = tf.function(self.nets.image_head, reduce_retracing=True)
        self._text = tf.function(self.nets.text_head, reduce_retracing=True)

    def _train_step(self, image, text, labels):
        cfg = self.cfg
        with tf.GradientTape() as tape:
            u, v = self.nets.image_head(image), self.nets.text_head(text)
            terms = losses.triplet_ranking_loss(u, v, labels, cfg.margin_value, cfg.mining)
        variables = {k: self.nets.variables(*g) for k, g in self.var_groups.items()}
        grads = tape.gradient(terms["loss"], variables)

        def apply():
            for name, vs in variables.items():
                # PyTorch's coupled weight decay: the decay term joins the gradient before Adam
                g = [gi + cfg.weight_decay * vi for gi, vi in zip(grads[name], vs)]
                self.optimizers[name].apply_gradients(zip(g, vs))
            return tf.constant(True)

        # a batch without any triplet is skipped (the release crashed on it)
        terms["applied"] = tf.cond(terms["triplets"] > 0, apply, lambda: tf.constant(False))
        return terms

    def codes(self, image: np.ndarray, text: np.ndarray, batch: int = 8192):
        return (training.batched(lambda x: binarize(self._image(x)), image, batch),
                training.batched(lambda x: binarize(self._text(x)), text, batch))

    def evaluate(self, queries: Split, database: Split) -> dict:
        qi, qt = self.codes(queries.image, queries.text)
        di, dt = self.codes(database.image, database.text)
        i2t, excl = metrics.hashing_map(qi, dt, queries.labels, database.labels)
        t2i, _ = metrics.hashing_map(qt, di, queries.labels, database.labels)
        return {"i2t_map": i2t, "t2i_map": t2i, "excluded_queries": excl}


def multi_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    return labels.astype(np.float32) if labels.ndim == 2 else np.eye(num_classes, dtype=np.float32)[labels]


def random_codes_map(queries: Split, database: Split, bits: int, seed: int = 0) -> float:
    """Chance level: mAP of independent random +-1 codes (averaged over both directions)."""
    rng = np.random.default_rng(seed)
    q = np.where(rng.random((len(queries), bits)) < 0.5, -1.0, 1.0)
    d = np.where(rng.random((len(database), bits)) < 0.5, -1.0, 1.0)
    return metrics.hashing_map(q, d, queries.labels, database.labels)[0]


# ---------------------------------------------------------------------- entry point

def define_flags():
    """Entry-point flags; defined only when run as a program, so tests can import the trainer."""
    run.define_run_flags(default_dataset="synthetic", default_output_dir="runs/cmhash")
    flags.DEFINE_list("bits", ["32"], "Code lengths, e.g. 16,32,64 (release: 32).")
    flags.DEFINE_float("margin", None, "Triplet margin on squared distances (default 12 * bits / 32; release 12 at 32 bits).")
    flags.DEFINE_enum("mining", "pivot", ["pivot", "anchor"], "pivot: the release's triplets; anchor: anchor-defined, no duplicates.")
    flags.DEFINE_integer("batch_size", 32, "Batch size (release 32).")
    flags.DEFINE_float("lr", 1e-3, "Adam learning rate (feature mode; the release's end-to-end rate is 1e-5).")
    flags.DEFINE_float("image_lr", None, "Separate image optimiser rate (the first commit's two-optimiser variant).")
    flags.DEFINE_float("text_lr", None, "Separate text optimiser rate.")
    flags.DEFINE_float("weight_decay", 5e-4, "Coupled L2 decay added to the gradient (release 5e-4).")
    flags.DEFINE_integer("hidden", None, "Optional ReLU hidden layer before each hash layer (deviation, e.g. for BoW input).")
    flags.DEFINE_integer("eval_every", 10, "Evaluate every N epochs (release 10) and after the last.")
    flags.DEFINE_integer("val_size", 500, "Validation queries held out of train when the dataset has no val split.")
    flags.DEFINE_bool("select_on_test", False, "Release behaviour: pick the epoch by TEST mAP (labelled in results).")


FLAGS = flags.FLAGS


def prepare_splits(ds, out_dir: str, seed: int, val_size: int):
    """(train, val, queries, database) as multi-hot Splits; a held-out val is saved to splits.npz."""
    c = ds.num_classes
    as_mh = lambda s: Split(s.image, s.text, multi_hot(s.labels, c))  # noqa: E731
    train, queries = ds.train, ds.test
    database = ds.database if ds.database is not None else ds.train
    if ds.val is not None:
        val = ds.val
    else:
        n = len(train)
        k = min(val_size, n // 5)
        if k < 1:
            raise ConfigError(f"{ds.name}: the train split ({n} pairs) is too small to hold out a validation set")
        order = np.random.default_rng(seed).permutation(n)
        val_idx, train_idx = np.sort(order[:k]), np.sort(order[k:])
        os.makedirs(out_dir, exist_ok=True)
        with io.atomic_open(os.path.join(out_dir, "splits.npz"), "wb") as f:
            np.savez(f, train_idx=train_idx, val_idx=val_idx)
        val, train = train.subset(val_idx), train.subset(train_idx)
    return as_mh(train), as_mh(val), as_mh(queries), as_mh(database)


def train_bits(cfg, train, val, queries, database, out_dir, select_on_test):
    trainer = CMHashTrainer(cfg, train.image.shape[1], train.text.shape[1])
    tensors = {"image": tf.constant(train.image), "text": tf.constant(train.text), "label": tf.constant(train.labels)}
    it = iter(pipelines.epoch_indices(len(train), cfg.batch_size, shuffle=True, seed=cfg.seed)
              .map(pipelines.gather_rows(tensors)))
    objects = {m.name: m for g in trainer.nets.groups.values() for m in g}
    objects.update({f"opt_{k}": (o, trainer.nets.variables(*trainer.var_groups[k])) for k, o in trainer.optimizers.items()})
    state = training.RunState(out_dir, iterator=it, **objects)
    if state.resumed:
        print(f"[{cfg.bits} bits] resumed after epoch {state.start_epoch - 1}")
    writer = training.SummaryWriter(run.tensorboard_dir(out_dir))
    steps = -(-len(train) // cfg.batch_size)
    progress = training.Progress(cfg.epochs - state.start_epoch, desc=f"[{cfg.bits} bits] epochs")
    start, first = time.time(), state.start_epoch
    for epoch in range(first, cfg.epochs):
        outs = []  # kept as tensors: no host round trip between steps
        for _ in range(steps):
            b = next(it)
            t = trainer.train_step(b["image"], b["text"], b["label"])
            outs.append((t["loss"], t["applied"]))
        losses_, applied = (tf.stack(x) for x in zip(*outs))
        logs = {"loss": float(tf.reduce_mean(losses_)),
                "skipped_batches": int(tf.reduce_sum(tf.cast(tf.logical_not(applied), tf.int32)))}
        if not np.isfinite(logs["loss"]):
            raise FloatingPointError(f"non-finite loss at epoch {epoch}")
        writer.scalars(logs, epoch)
        progress.update(1, loss=logs["loss"])
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs - 1:
            record = {"epoch": epoch, "losses": logs, "val": trainer.evaluate(val, database),
                      "test": trainer.evaluate(queries, database)}
            writer.scalars({f"{s}/{k}": v for s in ("val", "test") for k, v in record[s].items()}, epoch)
            print(f"[{cfg.bits} bits] epoch {epoch}: loss {logs['loss']:.4f}  val i2t {record['val']['i2t_map']:.4f} "
                  f"t2i {record['val']['t2i_map']:.4f}  test i2t {record['test']['i2t_map']:.4f} "
                  f"t2i {record['test']['t2i_map']:.4f}", flush=True)
            state.record(record)
    history = state.history
    if not history:
        raise ConfigError(f"{out_dir} already holds a finished run with no history")
    key = "test" if select_on_test else "val"
    best = max(history, key=lambda r: r[key]["i2t_map"] + r[key]["t2i_map"])
    return {"selected": dict(best["test"], epoch=best["epoch"], selected_on=key), "final": history[-1]["test"],
            "seconds_per_epoch": (time.time() - start) / max(cfg.epochs - first, 1)}


def main(argv):
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments {argv[1:]}")
    from common.datasets import load_dataset

    try:
        bits = [int(b) for b in FLAGS.bits]
    except ValueError:
        raise ConfigError(f"--bits must be integers, got {FLAGS.bits}") from None
    if any(b < 1 for b in bits) or (FLAGS.epochs is not None and FLAGS.epochs < 1) or FLAGS.batch_size < 2:
        raise ConfigError("--bits and --epochs must be positive and --batch_size at least 2")
    training.set_seed(FLAGS.seed)
    # `synthetic` here is the spec's multi-label hashing set (§8a), not the single-label default
    name = "synthetic-hashing" if FLAGS.dataset == "synthetic" else FLAGS.dataset
    ds = load_dataset(name, FLAGS.data_dir, seed=FLAGS.seed)
    train, val, queries, database = prepare_splits(ds, FLAGS.output_dir, FLAGS.seed, FLAGS.val_size)
    print(f"{ds.name}: train {len(train)}, validation {len(val)}, queries {len(queries)}, database {len(database)}; "
          f"dims {ds.image_dim}/{ds.text_dim}, {ds.num_classes} labels; bits {bits}")
    per_bits = {}
    for k in bits:
        cfg = CMHashConfig(bits=k, margin=FLAGS.margin, mining=FLAGS.mining, epochs=FLAGS.epochs or 50,
                           batch_size=FLAGS.batch_size, lr=FLAGS.lr, image_lr=FLAGS.image_lr, text_lr=FLAGS.text_lr,
                           weight_decay=FLAGS.weight_decay, hidden=FLAGS.hidden, eval_every=FLAGS.eval_every,
                           seed=FLAGS.seed)
        result = train_bits(cfg, train, val, queries, database, os.path.join(FLAGS.output_dir, f"bits_{k}"),
                            FLAGS.select_on_test)
        result["random_codes_map"] = random_codes_map(queries, database, k, FLAGS.seed)
        per_bits[str(k)] = result
    first = per_bits[str(bits[0])]["selected"]
    m = {"i2t_map": {k: r["selected"]["i2t_map"] for k, r in per_bits.items()},
         "t2i_map": {k: r["selected"]["t2i_map"] for k, r in per_bits.items()},
         "i2t_map_all": first["i2t_map"], "t2i_map_all": first["t2i_map"], "per_bits": per_bits}
    run.write_results(FLAGS.output_dir, dataset=ds.name, method="cmhash", seed=FLAGS.seed,
                      flag_dict=run.flag_values(), metrics=m,
                      note=("Hamming-ranking mAP over the whole database (queries without a relevant item excluded). "
                            + ("Epoch selected on the TEST queries (the release's practice)."
                               if FLAGS.select_on_test else "Epoch selected on the validation queries.")
                            + f" i2t_map_all/t2i_map_all are the {bits[0]}-bit values."))
    print(f"\n{'bits':>5} {'i2t':>7} {'t2i':>7} {'random':>7} (epoch selected on {'TEST' if FLAGS.select_on_test else 'validation'})")
    for k, r in per_bits.items():
        print(f"{k:>5} {r['selected']['i2t_map']:7.4f} {r['selected']['t2i_map']:7.4f} {r['random_codes_map']:7.4f}")
    print(f"results in {os.path.join(FLAGS.output_dir, 'results.json')}")


if __name__ == "__main__":
    define_flags()
    run.run_main(main)
