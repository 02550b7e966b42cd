"""Triplet-ranking cross-modal hashing entry point: flags -> config -> task -> run driver.

    python -m cmhash_tf.train                                   # synthetic multi-label, 32 bits
    python -m cmhash_tf.train --bits 16,32,64 --dataset iapr --data_dir data/iapr
    python -m cmhash_tf.train --dataset features --data_dir DIR # any feature widths
    python -m cmhash_tf.train --mode e2e --dataset iapr ...     # ResNet-18 + BERT end to end

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

import numpy as np
from absl import flags

from cmhash_tf.config import E2E_FLAGS, CMHashConfig, define_e2e_flags
from common import run
from common.errors import ConfigError, DataError

FLAGS = flags.FLAGS


def define_flags():
    run.define_run_flags(default_dataset="synthetic", default_output_dir="runs/cmhash")
    flags.DEFINE_list("bits", ["32"], "Code lengths, e.g. 16,32,64 (release: 32).")
    flags.DEFINE_float("margin", None,
                       "Triplet margin on squared distances (default 12 * bits / 32; release 12 at 32 bits).")
    flags.DEFINE_enum("mining", "pivot", ["pivot", "anchor"],
                      "pivot (release): the release's triplets; anchor: anchor-defined, no duplicates.")
    flags.DEFINE_integer("batch_size", 32, "Batch size (release 32).")
    flags.DEFINE_float("lr", 1e-3, "Adam learning rate (feature mode; the release's end-to-end rate is 1e-5).")
    flags.DEFINE_float("image_lr", None, "Separate image optimiser rate (the first commit's two-optimiser variant).")
    flags.DEFINE_float("text_lr", None, "Separate text optimiser rate.")
    flags.DEFINE_float("weight_decay", 5e-4, "Coupled L2 decay added to the gradient (release 5e-4).")
    flags.DEFINE_integer("hidden", None,
                         "Optional ReLU hidden layer before each hash layer (deviation, e.g. for BoW input).")
    flags.DEFINE_integer("eval_every", 10, "Evaluate every N epochs (release 10) and after the last.")
    run.define_checkpoint_flag()
    flags.DEFINE_integer("val_size", 500, "Validation queries held out of train when the dataset has no val split.")
    flags.DEFINE_bool("select_on_test", False, "Release behaviour: pick the epoch by TEST mAP (labelled in results) "
                      "and train on the whole train split (no validation hold-out).")
    flags.DEFINE_enum("adam", "torch", ["torch", "keras"], "torch (release): PyTorch's Adam, epsilon added to the "
                      "bias-corrected sqrt(v); keras: Keras/TF1 Adam (epsilon on the uncorrected sqrt(v)).")
    flags.DEFINE_enum("head_init", "torch", ["torch", "glorot"], "torch (release): nn.Linear's U(+-1/sqrt(fan_in)) for "
                      "the hash layers; glorot: Keras' Glorot-uniform kernels and zero biases.")
    flags.DEFINE_integer("num_queries", 2000, "mirflickr: queries drawn (seeded); the rest is the database.")
    flags.DEFINE_integer("num_train", 10000, "mirflickr: training items taken from the database.")
    flags.DEFINE_enum("mode", "features", ["features", "e2e"], "features: heads on precomputed features; e2e: "
                      "ResNet-18 + BERT trained end to end from local weights (needs the [e2e] extra).")
    flags.DEFINE_bool("text_only", False, "Hash the text side alone (T->T term, tag -> tag mAP); for data without "
                      "image features such as mirflickr's .mat files.")
    run.define_execution_flags()
    run.define_precision_flag("on a CPU it is SLOWER for feature-mode hashing (1.5-2.1x epoch time with "
                              "AVX512_BF16 or AMX, docs/benchmarks.md): not worth it there; end to end (--mode "
                              "e2e) the step takes 0.56x float32's time on an AMX CPU (tools.bench_e2e), its "
                              "retrieval quality unmeasured (no pretrained weights here).")
    define_e2e_flags()


def validate_flags() -> list:
    bits = run.int_list("bits")
    run.require_positive("epochs", "batch_size", "eval_every", "val_size", "num_queries", "num_train", "hidden",
                         "max_len", "image_size")
    run.check_execution_flags()
    run.require_nonnegative("histogram_every")
    for name in ("lr", "image_lr", "text_lr"):
        run.require_float(name)
    for name in ("margin", "weight_decay"):  # 0 is an ablation (as ACMR's --margin 0), not a mistake
        run.require_float(name, 0.0, low_open=False)
    if FLAGS.batch_size < 2:
        raise ConfigError("--batch_size must be at least 2 (triplets need two items)")
    unused = [([n], f"--{n} applies to --dataset mirflickr only (its seeded query draw)")
              for n in run.changed("num_queries", "num_train") if FLAGS.dataset != "mirflickr"]
    unused += [(["val_size", "select_on_test"], "--val_size would be ignored: --select_on_test holds nothing out")
               ] if run.changed("val_size") and FLAGS.select_on_test else []
    unused += [(["image_lr", "text_only"], "--image_lr would be ignored: a --text_only run has no image head")
               ] if FLAGS.text_only and FLAGS.image_lr is not None else []
    if FLAGS.mode == "features":
        unused += [([n], f"--{n} is an end-to-end option (--mode e2e); feature mode reads precomputed features and "
                         "would ignore it") for n in run.changed(*E2E_FLAGS)]
    for names, message in unused:
        run.refuse_ignored(names, message)
    if FLAGS.mode == "e2e":
        for name in ("text_only", "steps_per_execution", "jit_compile"):
            if FLAGS[name].present:
                raise ConfigError(f"--{name} is a feature-mode option (end to end runs one call per batch)")
        if FLAGS.dataset != "iapr" or not (FLAGS.data_dir and FLAGS.image_dir and FLAGS.text_dir):
            raise ConfigError("--mode e2e reads the IAPR split files: --dataset iapr --data_dir DIR --image_dir DIR "
                              "--text_dir DIR")
    return bits


def config_for(k: int, e2e_mode: bool) -> CMHashConfig:
    """Flags -> config; end to end, unset --lr / --epochs take the release's 1e-5 / 301."""
    lr = FLAGS.lr if (FLAGS["lr"].present or not e2e_mode) else 1e-5
    epochs = FLAGS.epochs or (301 if e2e_mode else 50)
    return CMHashConfig(bits=k, margin=FLAGS.margin, mining=FLAGS.mining, epochs=epochs, batch_size=FLAGS.batch_size,
                        lr=lr, image_lr=FLAGS.image_lr, text_lr=FLAGS.text_lr, weight_decay=FLAGS.weight_decay,
                        hidden=FLAGS.hidden, eval_every=FLAGS.eval_every, seed=FLAGS.seed, text_only=FLAGS.text_only,
                        adam=FLAGS.adam, head_init=FLAGS.head_init)


def main(argv):
    run.no_arguments(argv)
    bits = validate_flags()
    if FLAGS.mode == "e2e":
        return main_e2e(bits)
    from cmhash_tf.data import check_batch_memory, hold_out, multi_hot
    from common.dataset import Split
    from common.datasets import load_dataset

    # `synthetic` here is the spec's multi-label hashing set (§8a), not the single-label default
    name = "synthetic-hashing" if FLAGS.dataset == "synthetic" else FLAGS.dataset
    extra = {"num_queries": FLAGS.num_queries, "num_train": FLAGS.num_train} if name == "mirflickr" else {}
    ds = load_dataset(name, FLAGS.data_dir, seed=FLAGS.seed, **extra)
    if ds.image_dim == 0 and not FLAGS.text_only:
        raise ConfigError(f"{ds.where} has no image features; pass --text_only for tag -> tag hashing")
    c = ds.num_classes
    as_mh = lambda s: Split(s.image, s.text, multi_hot(s.labels, c))  # noqa: E731
    train, queries = ds.train, ds.test
    database = ds.database if ds.database is not None else ds.train
    saved = None
    if FLAGS.select_on_test:  # the release: every train pair trains, the epoch is chosen on the test queries
        val = None
    elif ds.val is not None:
        val = ds.val
    else:  # a seeded hold-out of train, saved with the run (with mirflickr's seeded protocol rows)
        train_idx, val_idx = hold_out(len(train), FLAGS.seed, FLAGS.val_size, ds.name)
        saved = dict(train_idx=train_idx, val_idx=val_idx)
        if ds.name == "mirflickr25k":
            saved.update({f"{k}_ids": s.ids for k, s in (("query", queries), ("database", database),
                                                         ("train", train)) if s.ids is not None})
        train, val = train.subset(train_idx), train.subset(val_idx)
    if saved is not None and len(val) < FLAGS.val_size:
        warnings_early = [f"--val_size {FLAGS.val_size}: {len(val)} validation items held out (at most a fifth of "
                          f"the {len(train) + len(val)} train pairs)"]
    elif ds.val is not None and FLAGS["val_size"].present:
        warnings_early = [f"--val_size is not used: {ds.where} has its own validation split"]
    else:
        warnings_early = []
    train, queries, database = (as_mh(s) for s in (train, queries, database))
    val = None if val is None else as_mh(val)
    print(f"{ds.name}: train {len(train)}, validation {len(val) if val is not None else 'none'}, queries "
          f"{len(queries)}, database {len(database)}; "
          f"dims {ds.image_dim}/{ds.text_dim}, {ds.num_classes} labels; bits {bits}", flush=True)
    check_batch_memory(FLAGS.batch_size, len(train))
    for w in warnings_early:
        print(f"warning: {w}", flush=True)
    gallery = ds.database if ds.database is not None else ds.train  # the database, in the labels' own form
    warnings = (warnings_early + run.data_warnings(ds, gallery=gallery, gallery_name="database")
                + check_signal(train, val, queries, database, FLAGS.mining))

    with run.run_folder(ds.fingerprint(), config_for(bits[0], e2e_mode=False).epochs,
                        parts=[f"bits_{k}" for k in bits]) as folder:
        run.import_tensorflow()  # a refused run has stopped above, before TensorFlow loads
        warnings += run.set_precision()
        from cmhash_tf.task import fit
        from common import io, training

        training.set_seed(FLAGS.seed)
        replicas = run.replicas()
        if saved is not None and replicas.is_chief:
            with io.atomic_open(os.path.join(FLAGS.output_dir, "splits.npz"), "wb") as f:
                np.savez(f, **saved)
        per_bits = {}
        for k in bits:
            cfg = config_for(k, e2e_mode=False)
            spe = run.steps_per_execution()
            per_bits[str(k)] = fit(cfg, train, val, queries, database, folder.part_path(f"bits_{k}"),
                                   FLAGS.select_on_test, options=fit_options(cfg, spe == 1), replicas=replicas,
                                   steps_per_execution=spe, jit_compile=run.jit_compile(replicas), seed=FLAGS.seed)
        report(folder, per_bits, bits, ds.name, warnings)


def check_signal(train, val, queries, database, mining: str) -> list:
    """Refuse data that cannot train or evaluate the method; the warnings for what is still valid."""
    from cmhash_tf.data import has_triplets, queries_without_relevant

    if not has_triplets(train.labels, mining):
        raise DataError("the training split cannot produce a single triplet (it needs items sharing a label and "
                        "items sharing none: more than one label class); the hashing loss would be zero")
    warnings = []
    for what, split in (("test queries", queries), ("validation queries", val)):
        if split is None:
            continue
        missing = queries_without_relevant(split, database)
        if missing == len(split):
            raise DataError(f"none of the {len(split)} {what} shares a label with the database: mAP is undefined")
        if missing > len(split) / 2:
            warnings.append(f"{missing} of {len(split)} {what} share no label with the database and are left out "
                            "of the mAP")
    for w in warnings:
        print(f"warning: {w}", flush=True)
    return warnings


def fit_options(cfg, batch_times: bool):
    from common import driver

    return driver.FitOptions(**run.fit_flags(), label=f"[{cfg.bits} bits]", batch_times=batch_times,
                             hparams=dataclasses.asdict(cfg))


def report(folder, per_bits: dict, bits: list, dataset: str, warnings: list) -> None:
    from cmhash_tf.task import map_keys

    keys = map_keys(config_for(bits[0], FLAGS.mode == "e2e"))
    results_path = os.path.join(folder.path, "results.json")
    trained = [r.pop("trained") for r in per_bits.values()]  # every entry's, before results.json sees them
    first = per_bits[str(bits[0])]["selected"]
    m = {k: {b: r["selected"][k] for b, r in per_bits.items()} for k in keys}
    m["per_bits"] = per_bits
    if FLAGS.text_only:
        contract = ("t2t_map",)
        what = "Text (tag) queries against the text side of the database only: no image side was trained."
    else:
        contract = ("i2t_map_all", "t2i_map_all")
        m.update(i2t_map_all=first["i2t_map"], t2i_map_all=first["t2i_map"])
        what = f"i2t_map_all/t2i_map_all are the {bits[0]}-bit values."
    selection = ("Epoch selected on the TEST queries (the release's practice). " if FLAGS.select_on_test else
                 "Epoch selected on the validation queries. ")
    if folder.finish(folder.path, trained=any(trained), final_step=None, dataset=dataset, method="cmhash",
                     seed=FLAGS.seed, flags=run.flag_values(), metrics=m, required=contract, warnings=warnings,
                     note="Hamming-ranking mAP over the whole database (queries without a relevant item excluded). "
                          + selection + what):
        for b, r in per_bits.items():  # each code length's model has its own TensorBoard folder
            folder.write_final(folder.part_path(f"bits_{b}"), r["selected"], r["selected"]["epoch"])
    print(f"\nHamming-ranking mAP of the test queries over the database, at the epoch selected on "
          f"{'TEST (the release)' if FLAGS.select_on_test else 'validation'}; random: random codes")
    print(f"{'bits':>5} " + " ".join(f"{k:>8}" for k in keys) + f" {'random':>8}")
    for b, r in per_bits.items():
        print(f"{b:>5} " + " ".join(f"{r['selected'][k]:8.4f}" for k in keys) + f" {r['random_codes_map']:8.4f}")
    print(f"results in {results_path}")


def main_e2e(bits: list) -> None:
    """ResNet-18 + BERT on the IAPR images and texts, one model per bit length."""
    run.import_tensorflow()  # before the modules that import it: its load-time banners held back
    from cmhash_tf import e2e
    from cmhash_tf.data import check_batch_memory, hold_out
    from common.dataset import require_rankable

    precision_warnings = run.set_precision()
    tok = e2e.load_tokenizer(FLAGS.vocab, FLAGS.text_preset, FLAGS.strip_accents)
    splits, cut = e2e.load_iapr_e2e(FLAGS.data_dir, FLAGS.image_dir, FLAGS.text_dir, tok, FLAGS.max_len,
                                    FLAGS.image_size, FLAGS.antialias)
    n_texts = sum(len(s) for s in splits.values())
    print(f"iapr (end to end): {cut} of {n_texts} texts cut at --max_len {FLAGS.max_len}")
    if FLAGS.select_on_test:
        train_idx, val_idx = np.arange(len(splits["train"])), np.zeros(0, np.int64)
        train, val = splits["train"], None
    else:
        train_idx, val_idx = hold_out(len(splits["train"]), FLAGS.seed, FLAGS.val_size, "iapr")
        train, val = splits["train"].subset(train_idx), splits["train"].subset(val_idx)
    queries, database = splits["test"], splits["database"]
    check_batch_memory(FLAGS.batch_size, len(train))  # the loss; the backbones come on top
    require_rankable(queries.labels, database.labels, "iapr: every test query", "database")
    warnings = check_signal(train, val, queries, database, FLAGS.mining) + precision_warnings
    from cmhash_tf.model import CMHashNetworks
    from cmhash_tf.task import CMHashTrainer, fit
    from common import io, training

    data = {"dataset": "iapr-e2e", "source": os.path.abspath(FLAGS.data_dir),
            "image_dir": os.path.abspath(FLAGS.image_dir), "text_dir": os.path.abspath(FLAGS.text_dir),
            "digest": e2e.fingerprint(splits)}
    with run.run_folder(data, config_for(bits[0], e2e_mode=True).epochs, parts=[f"bits_{k}" for k in bits]) as folder:
        training.set_seed(FLAGS.seed)
        replicas = run.replicas()
        if replicas.is_chief:
            with io.atomic_open(os.path.join(FLAGS.output_dir, "splits.npz"), "wb") as f:
                np.savez(f, train_idx=train_idx, val_idx=val_idx)
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
            runner = training.BatchRunner(trainer.train_step, train.train_batches(cfg.batch_size, cfg.seed),
                                          ("image", "text", "label"), ("loss", "applied"),
                                          -(-len(train) // cfg.batch_size))
            per_bits[str(k)] = fit(cfg, train, val, queries, database, folder.part_path(f"bits_{k}"),
                                   FLAGS.select_on_test, trainer=trainer, runner=runner,
                                   position={"iterator": runner.iterator}, options=fit_options(cfg, True),
                                   seed=FLAGS.seed)
        report(folder, per_bits, bits, "iapr-e2e", warnings)


def cli():
    define_flags()
    run.run_main(main, resumes=run.FROM_CHECKPOINT)


if __name__ == "__main__":
    cli()
