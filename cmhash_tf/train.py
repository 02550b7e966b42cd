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
from cmhash_tf.model import CMHashNetworks, HashHead, binarize
from common import distribute, export, io, metrics, pipelines, run, training
from common.dataset import Split
from common.errors import ConfigError, DivergenceError


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
    text_only: bool = False          # tag -> tag hashing: the T->T term, text head only

    @property
    def margin_value(self) -> float:
        return 12.0 * self.bits / 32.0 if self.margin is None else self.margin


class CMHashTrainer:
    def __init__(self, cfg: CMHashConfig, image_dim: int, text_dim: int, nets: CMHashNetworks | None = None,
                 replicas: distribute.Replicas | None = None):
        """Heads on features of the given widths, or prebuilt `nets` (the end-to-end backbones,
        built by the caller inside `replicas.scope()`)."""
        self.cfg = cfg
        self.replicas = replicas or distribute.Replicas()
        with self.replicas.scope():
            self._build(nets, image_dim, text_dim)
        self.train_step = tf.function(self._train_step, reduce_retracing=True)
        self._image = None if cfg.text_only else tf.function(self.nets.image_head, reduce_retracing=True)
        self._text = tf.function(self.nets.text_head, reduce_retracing=True)

    def _build(self, nets, image_dim, text_dim):
        cfg = self.cfg
        self.nets = nets or CMHashNetworks(None if cfg.text_only else image_dim, text_dim, cfg.bits, cfg.hidden)
        if cfg.text_only:
            self.var_groups = {"text": ("text",)}
            rates = {"text": cfg.text_lr or cfg.lr}
        elif cfg.image_lr is None and cfg.text_lr is None:
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

    def _train_step(self, image, text, labels):
        return self.replicas.run(self._replica_step, image, text, labels)

    def _replica_step(self, image, text, labels):
        """Heads on this replica's rows; triplets mined over the gathered global batch. Under a
        strategy, end-to-end batch-norm statistics are per replica (no cross-replica sync)."""
        cfg = self.cfg
        # training=True: BERT dropout and batch-norm statistics, as the release's train()
        text_head = lambda x: self.nets.text_head(x, training=True)  # noqa: E731
        with tf.GradientTape() as tape:
            if cfg.text_only:
                terms = losses.single_modality_loss(distribute.per_row(text_head, text), labels,
                                                    cfg.margin_value, cfg.mining)
            else:
                u = distribute.per_row(lambda x: self.nets.image_head(x, training=True), image)
                terms = losses.triplet_ranking_loss(u, distribute.per_row(text_head, text), labels,
                                                    cfg.margin_value, cfg.mining)
        grads = distribute.replica_share(tape.gradient(terms["loss"], self.group_variables()))
        # a batch without any triplet is skipped (the release crashed on it). Under a strategy the
        # update cannot sit in a tf.cond (it synchronises replicas), so such a batch is applied
        # with its zero gradient there: Adam's moments decay and its step count advances.
        if self.replicas.num > 1:
            self.apply_gradients(grads)
            terms["applied"] = terms["triplets"] > 0
        else:
            terms["applied"] = tf.cond(terms["triplets"] > 0, lambda: self.apply_gradients(grads),
                                       lambda: tf.constant(False))
        return terms

    def group_variables(self) -> dict:
        return {k: self.nets.variables(*g) for k, g in self.var_groups.items()}

    def apply_gradients(self, grads: dict):
        """One update per optimiser with PyTorch's coupled weight decay: wd * theta joins the
        gradient before Adam (dense, also for embedding tables whose gradient is IndexedSlices)."""
        for name, vs in self.group_variables().items():
            # each replica adds its 1/R share of the decay; the optimiser sums replica gradients
            g = [tf.convert_to_tensor(gi) + distribute.replica_share(self.cfg.weight_decay * vi)
                 for gi, vi in zip(grads[name], vs)]
            distribute.apply_gradients(self.optimizers[name], zip(g, vs))
        return tf.constant(True)

    def split_codes(self, split) -> tuple:
        """(image codes or None, text codes) of every item of a split."""
        if hasattr(split, "eval_batches"):  # end to end: images decoded and texts fed batch by batch
            parts = [(binarize(self._image(b["image"])), binarize(self._text(b["text"])))
                     for b in split.eval_batches()]
            return tuple(np.concatenate([np.asarray(p[i]) for p in parts]) for i in (0, 1))
        code = lambda fn: (lambda x: binarize(fn(x)))  # noqa: E731
        text = training.batched(code(self._text), split.text, 8192)
        if self.cfg.text_only:
            return None, text
        return training.batched(code(self._image), split.image, 8192), text

    def make_runner(self, train: Split, steps_per_execution: int = 0, jit_compile: bool = False):
        """Feature mode's epoch loop in the graph: reshuffled every epoch (release), mean loss
        and whether each batch had triplets."""
        return training.EpochRunner(self._train_step, pipelines.split_tensors(train), ("image", "text", "label"),
                                    ("loss", "applied"), self.cfg.batch_size, shuffle=True, seed=self.cfg.seed,
                                    steps_per_execution=steps_per_execution, jit_compile=jit_compile)

    def evaluate(self, queries, database) -> dict:
        qi, qt = self.split_codes(queries)
        di, dt = self.split_codes(database)
        if self.cfg.text_only:
            t2t, excl = metrics.hashing_map(qt, dt, queries.labels, database.labels)
            return {"t2t_map": t2t, "excluded_queries": excl}
        i2t, excl = metrics.hashing_map(qi, dt, queries.labels, database.labels)
        t2i, _ = metrics.hashing_map(qt, di, queries.labels, database.labels)
        return {"i2t_map": i2t, "t2i_map": t2i, "excluded_queries": excl}


def map_keys(cfg: CMHashConfig) -> tuple:
    return ("t2t_map",) if cfg.text_only else ("i2t_map", "t2i_map")


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
    flags.DEFINE_integer("num_queries", 2000, "mirflickr: queries drawn (seeded); the rest is the database.")
    flags.DEFINE_integer("num_train", 10000, "mirflickr: training items taken from the database.")
    flags.DEFINE_enum("mode", "features", ["features", "e2e"], "features: heads on precomputed features; e2e: "
                      "ResNet-18 + BERT trained end to end from local weights (needs the [e2e] extra).")
    run.define_execution_flags()
    from cmhash_tf import e2e  # keras-hub is imported only when a backbone is built

    e2e.define_flags()
    flags.DEFINE_bool("text_only", False, "Hash the text side alone (T->T term, tag -> tag mAP); for data without "
                      "image features such as mirflickr's .mat files.")


FLAGS = flags.FLAGS


def prepare_splits(ds, out_dir: str, seed: int, val_size: int):
    """(train, val, queries, database) as multi-hot Splits; a held-out val is saved to splits.npz."""
    c = ds.num_classes
    as_mh = lambda s: Split(s.image, s.text, multi_hot(s.labels, c))  # noqa: E731
    train, queries = ds.train, ds.test
    database = ds.database if ds.database is not None else ds.train
    # a seeded protocol split (mirflickr) is saved with the run, so it can be reproduced elsewhere
    ids = {f"{k}_ids": s.ids for k, s in (("query", queries), ("database", database), ("train", train))
           if ds.name == "mirflickr25k" and s.ids is not None}
    if ds.val is not None:
        val = ds.val
    else:
        train, val = hold_out(train, out_dir, seed, val_size, ds.name, **ids)
    return as_mh(train), as_mh(val), as_mh(queries), as_mh(database)


def hold_out(train, out_dir: str, seed: int, val_size: int, name: str, **saved):
    """(train, val): a seeded hold-out of `val_size` (at most a fifth) items; the indices (into
    the train split) and any `saved` arrays go to splits.npz."""
    n = len(train)
    k = min(val_size, n // 5)
    if k < 1:
        raise ConfigError(f"{name}: the train split ({n} pairs) is too small to hold out a validation set")
    order = np.random.default_rng(seed).permutation(n)
    val_idx, train_idx = np.sort(order[:k]), np.sort(order[k:])
    os.makedirs(out_dir, exist_ok=True)
    with io.atomic_open(os.path.join(out_dir, "splits.npz"), "wb") as f:
        np.savez(f, train_idx=train_idx, val_idx=val_idx, **saved)
    return train.subset(train_idx), train.subset(val_idx)


def train_bits(cfg, train, val, queries, database, out_dir, select_on_test, trainer=None, batches=None,
               replicas=None, steps_per_execution=0, jit_compile=False):
    """Train one bit length: feature heads, the epoch in the graph (`training.EpochRunner`), by
    default; end to end, `trainer` + `batches` (images read from files), one call per batch."""
    if trainer is None:
        trainer = CMHashTrainer(cfg, train.image.shape[1], train.text.shape[1], replicas=replicas)
        # feature heads export as two encoders with hash signatures
        if not cfg.text_only and trainer.replicas.is_chief:
            head = (HashHead, {"bits": cfg.bits, "hidden": cfg.hidden})
            export.write_spec(out_dir, "cmhash", {"image_head": head, "text_head": head},
                              image={"dim": train.image.shape[1], "model": "image_head"},
                              text={"dim": train.text.shape[1], "model": "text_head"}, hash_codes=True)
    if batches is None:
        runner = trainer.make_runner(train, steps_per_execution, jit_compile)
        position = {}
    else:
        runner = training.BatchRunner(trainer.train_step, batches, ("image", "text", "label"), ("loss", "applied"),
                                      -(-len(train) // cfg.batch_size))
        position = {"iterator": runner.iterator}
    objects = {m.name: m for g in trainer.nets.groups.values() for m in g}
    objects.update({f"opt_{k}": (o, trainer.nets.variables(*trainer.var_groups[k])) for k, o in trainer.optimizers.items()})
    state = training.RunState(out_dir, replicas=trainer.replicas, **position, **objects)
    if state.resumed:
        print(f"[{cfg.bits} bits] resumed after epoch {state.start_epoch - 1}")
    writer = training.SummaryWriter(run.tensorboard_dir(out_dir), trainer.replicas)
    progress = training.Progress(cfg.epochs - state.start_epoch, desc=f"[{cfg.bits} bits] epochs")
    start, first = time.time(), state.start_epoch
    for epoch in range(first, cfg.epochs):
        values = runner.run_epoch(epoch)
        logs = {"loss": float(np.mean(values["loss"])), "skipped_batches": int(np.sum(values["applied"] == 0))}
        bad = training.first_nonfinite(values)
        if bad is not None:
            raise DivergenceError(f"non-finite loss at epoch {epoch} batch {bad}; the last good checkpoint is kept")
        writer.scalars(logs, epoch)
        progress.update(1, loss=logs["loss"])
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs - 1:
            record = {"epoch": epoch, "losses": logs, "val": trainer.evaluate(val, database),
                      "test": trainer.evaluate(queries, database)}
            writer.scalars({f"{s}/{k}": v for s in ("val", "test") for k, v in record[s].items()}, epoch)
            shown = "  ".join(f"{s} {k[:3]} {record[s][k]:.4f}" for s in ("val", "test") for k in map_keys(cfg))
            print(f"[{cfg.bits} bits] epoch {epoch}: loss {logs['loss']:.4f}  {shown}", flush=True)
            state.record(record)
    history = state.history
    if not history:
        raise ConfigError(f"{out_dir} already holds a finished run with no history")
    key = "test" if select_on_test else "val"
    best = max(history, key=lambda r: sum(r[key][k] for k in map_keys(cfg)))
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
    replicas = run.replicas()
    if FLAGS.mode == "e2e":
        return main_e2e(bits, replicas)
    # `synthetic` here is the spec's multi-label hashing set (§8a), not the single-label default
    name = "synthetic-hashing" if FLAGS.dataset == "synthetic" else FLAGS.dataset
    extra = {"num_queries": FLAGS.num_queries, "num_train": FLAGS.num_train} if name == "mirflickr" else {}
    ds = load_dataset(name, FLAGS.data_dir, seed=FLAGS.seed, **extra)
    if ds.image_dim == 0 and not FLAGS.text_only:
        raise ConfigError(f"{ds.source or ds.name} has no image features; pass --text_only for tag -> tag hashing")
    train, val, queries, database = prepare_splits(ds, FLAGS.output_dir, FLAGS.seed, FLAGS.val_size)
    print(f"{ds.name}: train {len(train)}, validation {len(val)}, queries {len(queries)}, database {len(database)}; "
          f"dims {ds.image_dim}/{ds.text_dim}, {ds.num_classes} labels; bits {bits}")
    per_bits = {}
    for k in bits:
        cfg = config_for(k, e2e_mode=False)
        result = train_bits(cfg, train, val, queries, database, os.path.join(FLAGS.output_dir, f"bits_{k}"),
                            FLAGS.select_on_test, replicas=replicas, steps_per_execution=FLAGS.steps_per_execution,
                            jit_compile=run.jit_compile(replicas))
        result["random_codes_map"] = random_codes_map(queries, database, k, FLAGS.seed)
        per_bits[str(k)] = result
    if replicas.is_chief:
        report(per_bits, bits, ds.name, map_keys(cfg))


def report(per_bits: dict, bits: list, dataset: str, keys: tuple) -> None:
    first = per_bits[str(bits[0])]["selected"]
    m = {k: {b: r["selected"][k] for b, r in per_bits.items()} for k in keys}
    m["per_bits"] = per_bits
    if FLAGS.text_only:
        contract = ("t2t_map",)
        what = "Text (tag) queries against the text side of the database only: no image side was trained."
    else:
        contract = None
        m.update(i2t_map_all=first["i2t_map"], t2i_map_all=first["t2i_map"])
        what = f"i2t_map_all/t2i_map_all are the {bits[0]}-bit values."
    run.write_results(FLAGS.output_dir, dataset=dataset, method="cmhash", seed=FLAGS.seed,
                      flag_dict=run.flag_values(), metrics=m, required=contract,
                      note=("Hamming-ranking mAP over the whole database (queries without a relevant item excluded). "
                            + ("Epoch selected on the TEST queries (the release's practice). "
                               if FLAGS.select_on_test else "Epoch selected on the validation queries. ") + what))
    print(f"\n{'bits':>5} " + " ".join(f"{k:>8}" for k in keys) + f" {'random':>8} (epoch selected on "
          f"{'TEST' if FLAGS.select_on_test else 'validation'})")
    for b, r in per_bits.items():
        print(f"{b:>5} " + " ".join(f"{r['selected'][k]:8.4f}" for k in keys) + f" {r['random_codes_map']:8.4f}")
    print(f"results in {os.path.join(FLAGS.output_dir, 'results.json')}")


def config_for(k: int, e2e_mode: bool) -> CMHashConfig:
    """Flags -> config; end to end, unset --lr / --epochs take the release's 1e-5 / 301."""
    lr = FLAGS.lr if (FLAGS["lr"].present or not e2e_mode) else 1e-5
    epochs = FLAGS.epochs or (301 if e2e_mode else 50)
    return CMHashConfig(bits=k, margin=FLAGS.margin, mining=FLAGS.mining, epochs=epochs, batch_size=FLAGS.batch_size,
                        lr=lr, image_lr=FLAGS.image_lr, text_lr=FLAGS.text_lr, weight_decay=FLAGS.weight_decay,
                        hidden=FLAGS.hidden, eval_every=FLAGS.eval_every, seed=FLAGS.seed, text_only=FLAGS.text_only)


def main_e2e(bits: list, replicas) -> None:
    """ResNet-18 + BERT on the IAPR images and texts, one model per bit length."""
    from cmhash_tf import e2e

    if FLAGS.dataset != "iapr" or not (FLAGS.data_dir and FLAGS.image_dir and FLAGS.text_dir):
        raise ConfigError("--mode e2e reads the IAPR split files: --dataset iapr --data_dir DIR --image_dir DIR "
                          "--text_dir DIR")
    for name in ("text_only", "steps_per_execution", "jit_compile"):
        if FLAGS[name].present:
            raise ConfigError(f"--{name} is a feature-mode option (end to end runs one call per batch)")
    tok = e2e.load_tokenizer(FLAGS.vocab, FLAGS.text_preset)
    splits, cut = e2e.load_iapr_e2e(FLAGS.data_dir, FLAGS.image_dir, FLAGS.text_dir, tok, FLAGS.max_len,
                                    FLAGS.image_size)
    n_texts = sum(len(s) for s in splits.values())
    print(f"iapr (end to end): {cut} of {n_texts} texts cut at --max_len {FLAGS.max_len}")
    train, val = hold_out(splits["train"], FLAGS.output_dir, FLAGS.seed, FLAGS.val_size, "iapr")
    queries, database = splits["test"], splits["database"]
    per_bits = {}
    for k in bits:
        cfg = config_for(k, e2e_mode=True)
        with replicas.scope():
            image_bb, text_bb = e2e.build_backbones(FLAGS.image_preset, FLAGS.text_preset, tok,
                                                    FLAGS.allow_random_init, FLAGS.tiny_text)
            nets = CMHashNetworks(None, None, image_model=e2e.ImageNet(image_bb, k, name="image_net"),
                                  text_model=e2e.TextNet(text_bb, k, name="text_net"))
            first = next(iter(train.eval_batches(2)))
            nets.image_head(first["image"])
            nets.text_head(first["text"])
        trainer = CMHashTrainer(cfg, 0, 0, nets=nets, replicas=replicas)
        result = train_bits(cfg, train, val, queries, database, os.path.join(FLAGS.output_dir, f"bits_{k}"),
                            FLAGS.select_on_test, trainer=trainer, batches=train.train_batches(cfg.batch_size, cfg.seed))
        result["random_codes_map"] = random_codes_map(queries, database, k, FLAGS.seed)
        per_bits[str(k)] = result
    if replicas.is_chief:
        report(per_bits, bits, "iapr-e2e", ("i2t_map", "t2i_map"))


if __name__ == "__main__":
    define_flags()
    run.run_main(main)
