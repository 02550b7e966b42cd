"""JFSE / CFSA entry point (the project's main job): flags -> config -> task -> run driver.

    python -m jfse_tf.train                                  # synthetic, scenarios standard + zs + gzs
    python -m jfse_tf.train --method cfsa                    # CFSA preset: zero-shot only
    python -m jfse_tf.train --dataset xmn --data_dir data/xmn --scenario zs   # the release's setting
    python -m jfse_tf.train --dataset features --data_dir DIR # needs class_emb.npy, unseen_classes.txt

`python -m jfse_tf.demo` is the same program under the release's name. One sub-folder of
--output_dir per trained scenario (`standard`, `zs`; `gzs` holds the results of the zs model on
the pooled test set), each with results.json, flags.json, history.json, tb/ and checkpoints/.
Re-running the same command resumes from the last checkpoint.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from absl import flags

from common import run
from common.dataset import require_classes
from common.errors import ConfigError, DataError
from jfse_tf.config import CFSA_ADVERSARY, RELEASE_WEIGHTS, SYNTHETIC_EPOCHS, JFSEConfig

FLAGS = flags.FLAGS


def define_flags():
    run.define_run_flags(default_output_dir="runs/jfse")
    run.define_execution_flags(default_steps=16, why=" (JFSE's default 16: about 20 s of work at release widths on "
                               "2 CPU cores, against a 10-minute XMediaNet-sized epoch)")
    run.define_precision_flag("0.56x float32's epoch time for JFSE at release widths on a CPU with AMX (Wikipedia and "
                              "XMediaNet sizes; 0.87-0.97x with AVX512_BF16 alone, measured before fused updates "
                              "and shared weight casts; docs/benchmarks.md).")
    flags.DEFINE_enum("method", "jfse", ["jfse", "cfsa"], "cfsa: zero-shot only, CMPM, no modality adversary.")
    flags.DEFINE_enum("scenario", "all", ["all", "standard", "zs", "gzs"], "Retrieval scenario(s).")
    flags.DEFINE_enum("align", "cmpm", ["cmpm", "cmmd", "cmca"],
                      "Alignment loss in the two alignment slots (release: cmpm).")
    flags.DEFINE_integer("batch_size", 64, "Batch size (release 64).")
    flags.DEFINE_integer("n_critic", 5, "Critic updates per batch (release 5).")
    flags.DEFINE_float("lr", 1e-4, "Adam learning rate of all four optimisers (release 1e-4).")
    flags.DEFINE_float("beta1", 0.5, "Adam beta_1 (release 0.5).")
    flags.DEFINE_float("gp_lambda", 10.0, "Gradient-penalty weight (release 10).")
    flags.DEFINE_integer("noise_dim", 300, "Generator noise width (release 300).")
    flags.DEFINE_integer("hidden", 4096, "Hidden width of G, D and R (release 4096).")
    flags.DEFINE_integer("eval_every", 2, "Evaluate every N epochs (release 2) and after the last.")
    run.define_checkpoint_flag()
    flags.DEFINE_enum("norm", "batch_minmax", ["batch_minmax", "none"],
                      "batch_minmax (release): per-batch min-max of features and class embeddings; none: raw inputs.")
    flags.DEFINE_bool("shuffle", False, "Default (release): file order every epoch; --shuffle: reshuffle per epoch.")
    flags.DEFINE_enum("eval_variants", "all", ["all", "minmax"],
                      "all (release): four test-time variants; minmax: only the one matching training.")
    flags.DEFINE_enum("class_targets", "row", ["row", "class"],
                      "row (release): each training pair regresses to its own train_attribute row (xmn); class: the "
                      "class embedding of its label (the first attribute row of the class, or class_emb.npy).")
    flags.DEFINE_bool("synthesize_unseen", False,
                      "Not in the release: in zs/gzs training the regressors also learn from features the "
                      "generators make for unseen classes from their class embeddings.")
    for key, value in RELEASE_WEIGHTS.items():
        flags.DEFINE_float(key, value, f"Loss weight {key} (spec jfse.md §3.5; release {value}).")


def validate_flags() -> None:
    run.require_positive("epochs", "batch_size", "n_critic", "noise_dim", "hidden", "eval_every")
    run.check_execution_flags()
    run.require_nonnegative("histogram_every")
    run.require_float("lr")
    run.require_float("beta1", 0.0, 1.0, low_open=False, high_open=True)
    run.require_float("gp_lambda", 0.0, low_open=False)
    for key in RELEASE_WEIGHTS:
        run.require_float(key, 0.0, low_open=False)
    if FLAGS.batch_size < 2:
        raise ConfigError("--batch_size must be at least 2 (per-batch min-max and CMPM compare rows)")
    if FLAGS.synthesize_unseen and FLAGS.scenario == "standard":
        run.refuse_ignored(["synthesize_unseen", "scenario"], "--synthesize_unseen trains the zs / gzs models (they "
                           "hold unseen classes out); --scenario standard has none, so it would be ignored")
    if FLAGS.method == "cfsa":  # the preset fixes these: a flag it would override is refused, not ignored
        names = ["scenario"] if FLAGS.scenario not in ("all", "zs") else []
        names += ["align"] if FLAGS.align != "cmpm" else []
        names += run.changed(*CFSA_ADVERSARY)  # their defaults are RELEASE_WEIGHTS
        fixed = [f"--{k} {FLAGS[k].value:g}" if isinstance(FLAGS[k].value, float) else f"--{k} {FLAGS[k].value}"
                 for k in names]
        if fixed:
            run.refuse_ignored(names + ["method"], f"--method cfsa is zero-shot only with CMPM alignment and no "
                               f"modality adversary (docs/jfse.md), so {', '.join(fixed)} would be ignored; drop "
                               f"{'it' if len(fixed) == 1 else 'them'}, or use --method jfse")


def config_from_flags() -> JFSEConfig:
    weights = {k: getattr(FLAGS, k) for k in RELEASE_WEIGHTS}
    cfg = JFSEConfig(method=FLAGS.method, align=FLAGS.align, batch_size=FLAGS.batch_size,
                     n_critic=FLAGS.n_critic, lr=FLAGS.lr, beta1=FLAGS.beta1, gp_lambda=FLAGS.gp_lambda,
                     noise_dim=FLAGS.noise_dim, hidden=FLAGS.hidden, eval_every=FLAGS.eval_every,
                     norm=FLAGS.norm, shuffle=FLAGS.shuffle, eval_variants=FLAGS.eval_variants,
                     synthesize_unseen=FLAGS.synthesize_unseen, seed=FLAGS.seed, weights=weights)
    cfg.epochs = FLAGS.epochs or (SYNTHETIC_EPOCHS if FLAGS.dataset.startswith("synthetic") else 500)
    return cfg.for_method()


def feasible(ds, scenarios):
    """Drop scenarios the split cannot support (the xmn release: its test set is unseen classes only)."""
    train_classes, test_classes = set(np.unique(ds.train.labels)), set(np.unique(ds.test.labels))
    drop = {}
    if not test_classes <= train_classes:
        drop["standard"] = "the test split holds classes absent from training (a zero-shot split)"
    if not test_classes & train_classes:
        drop["gzs"] = "the test split holds no seen class to pool with the unseen ones"
    kept = [s for s in scenarios if s not in drop]
    for s in scenarios:
        if s in drop:
            print(f"skipping {s}: {drop[s]}")
    if not kept:
        raise ConfigError(f"{ds.where}: cannot run {scenarios}: " + "; ".join(drop.values()))
    return kept


def main(argv):
    run.no_arguments(argv)
    validate_flags()
    cfg = config_from_flags()
    from common.datasets import load_dataset

    ds = load_dataset(FLAGS.dataset, FLAGS.data_dir, seed=FLAGS.seed)
    if ds.multilabel:
        raise ConfigError(f"{ds.where}: JFSE needs single-label classes (one class embedding per pair)")
    ds.class_embedding_rows(ds.train.labels)  # JFSE needs class embeddings: fail early and clearly
    scenarios = ["zs"] if cfg.method == "cfsa" else (
        ["standard", "zs", "gzs"] if FLAGS.scenario == "all" else [FLAGS.scenario])
    scenarios = feasible(ds, scenarios)
    require_classes(ds.train.labels, f"{ds.where}: the train split", "JFSE's alignment losses")
    if "standard" in scenarios:
        require_classes(ds.test.labels, f"{ds.where}: the test split",
                        "a meaningful mAP (one class makes every item relevant)")
    zs = None
    if {"zs", "gzs"} & set(scenarios):
        zs = ds.zero_shot()
        zs.require_evaluable(ds.where)
        if cfg.synthesize_unseen:
            try:
                ds.class_embedding_rows(zs.unseen_classes)
            except DataError as e:
                raise DataError(f"--synthesize_unseen needs the unseen classes' embeddings (class_emb.npy with a row "
                                f"per class): {e}") from None
    print(f"{ds.name}: {len(ds.train)} train / {len(ds.test)} test pairs, dims {ds.image_dim}/{ds.text_dim}, "
          f"class embeddings {ds.class_embeddings.shape}; method {cfg.method}, align {cfg.align}, "
          f"{run.counted(cfg.epochs, 'epoch')}, scenarios {scenarios}", flush=True)
    if zs is not None:
        print(zs.describe(ds.class_names), flush=True)
    warnings = run.data_warnings(ds, standard="standard" in scenarios)

    parts = [p for p in ("standard", "zs") if p in scenarios or (p == "zs" and "gzs" in scenarios)]
    parts += ["gzs"] if "gzs" in scenarios else []
    table = []
    with run.run_folder(ds.fingerprint(), cfg.epochs, parts=parts, fixed_length=run.GRL_SCHEDULE_LENGTH) as folder:
        # refusals have stopped above, before TensorFlow loads
        run.import_tensorflow()
        warnings += run.set_precision()
        replicas = run.replicas()
        if "standard" in scenarios:
            summ, info = train_scenario(folder, "standard", cfg, ds, ds.train, {"test": ds.test}, ds.val, replicas,
                                        targets=training_targets(ds, np.arange(len(ds.train)), FLAGS.class_targets))
            chance = chance_of(ds.test)
            write(folder, info, "standard", ds, cfg, summ["test"], warnings=warnings, chance=chance)
            table.append(("standard", summ["test"]["contract"], chance))
        if zs is not None:
            sets = {"unseen": zs.test_unseen}
            if len(zs.test_seen):
                sets.update(seen=zs.test_seen, pooled=zs.test_all)
            summ, info = train_scenario(folder, "zs", cfg, ds, zs.train, sets, zs.val, replicas,
                                        unseen=zs.unseen_classes,
                                        targets=training_targets(ds, zs.train_rows, FLAGS.class_targets))
            if "zs" in scenarios:
                seen = {"seen": summ["seen"], "chance": chance_of(zs.test_seen)} if "seen" in summ else None
                chance = chance_of(zs.test_unseen)
                write(folder, info, "zs", ds, cfg, summ["unseen"], seen=seen, warnings=warnings, chance=chance)
                table.append(("zs unseen", summ["unseen"]["contract"], chance))
                if seen:
                    table.append(("zs seen", summ["seen"]["contract"], seen["chance"]))
            if "gzs" in scenarios:
                chance = chance_of(zs.test_all)
                write(folder, info, "gzs", ds, cfg, summ["pooled"], prefix="gzs_", warnings=warnings, chance=chance)
                table.append(("gzs pooled", summ["pooled"]["contract"], chance))
    print(f"\n{cfg.method} on {ds.name}: the contract's numbers, cosine mAP@all of the final epoch on min-max "
          "scaled test inputs (the per-epoch blocks above are the release's z-scored variants):")
    print(f"{'scenario':<16} {'i2t':>7} {'t2i':>7} {'avg':>7} {'chance':>7}")
    for name, r, chance in table:
        i2t, t2i = r["i2t_map_all"], r["t2i_map_all"]
        print(f"{name:<16} {i2t:7.4f} {t2i:7.4f} {(i2t + t2i) / 2:7.4f} {chance:7.4f}")
    print(f"results under {FLAGS.output_dir}/<scenario>/results.json")


def training_targets(ds, rows: np.ndarray, mode: str = "row") -> np.ndarray:
    """The class-embedding row each training pair regresses to (and conditions the generators on).

    The xmn release feeds every pair its own `train_attribute` row (`--class_targets row`, the
    default); rows of one class need not agree, and the message says when they do not.
    `--class_targets class` (or data without attribute rows) takes the class embedding of the label.
    """
    attribute = ds.extras.get("train_attribute")
    if mode == "row" and attribute is not None:
        labels = ds.train.labels
        spread = [float(np.abs(attribute[labels == c] - attribute[labels == c][0]).max()) for c in np.unique(labels)]
        differ = sum(s > 0 for s in spread)
        if differ:
            print(f"{ds.where}: train_attribute rows differ within {differ} of {len(spread)} classes (up "
                  f"to {max(spread):.3g}); each pair regresses to its own row, as the release "
                  "(--class_targets class: one embedding per class)")
        return np.asarray(attribute, np.float32)[rows]
    return ds.class_embedding_rows(ds.train.labels[rows])


def train_scenario(folder, name, cfg, ds, train, eval_sets, val, replicas, unseen=None, targets=None):
    """Train (or resume) one model in its part folder; returns (summary per evaluation set, info).

    info: `trained` (False when the part was already complete) and `seconds_per_epoch`."""
    from common import driver, export, training
    from jfse_tf.task import JFSETask, JFSETrainer, summarise

    training.set_seed(cfg.seed)  # each scenario's result is independent of the ones run before it
    if unseen is None:
        cfg = dataclasses.replace(cfg, synthesize_unseen=False)  # nothing unseen in the standard scenario
    unseen_emb = ds.class_embedding_rows(unseen) if cfg.synthesize_unseen else None
    trainer = JFSETrainer(cfg, ds.image_dim, ds.text_dim, ds.class_embeddings.shape[1], ds.num_classes,
                          unseen_class_emb=unseen_emb, unseen_classes=unseen, replicas=replicas)
    spe = run.steps_per_execution()
    task = JFSETask(trainer, train, targets, eval_sets, val, spe, run.jit_compile(replicas), label=f"[{name}] ")
    path = folder.part_path(name)
    if replicas.is_chief:
        export.write_spec(path, **task.encoders(ds.class_embeddings.shape[1]))
    result = driver.fit(task, path, driver.FitOptions(
        **run.fit_flags(), label=f"[{name}]", batch_times=spe == 1,
        hparams=dict(dataclasses.asdict(cfg), scenario=name)))
    return ({s: summarise(result.history, s, cfg.eval_every) for s in eval_sets},
            {"trained": result.trained > 0, "seconds_per_epoch": result.seconds_per_unit})


def chance_of(split) -> float:
    """mAP@all of a random ranking of this (paired, single-label) test set: the same both ways."""
    from common import metrics

    return metrics.expected_random_map(split.labels, split.labels)


def write(folder, info, scenario, ds, cfg, summary, seen=None, prefix="", warnings=(), chance=None):
    """results.json of one scenario: the contract's numbers, the chance level of the test set they
    rank, and the release's labelled selections (left as it is when the model was already complete
    and its results exist). `seen`: {"seen": summary, "chance": float} of zero-shot's seen classes."""
    m = {f"{prefix}{k}": v for k, v in summary["contract"].items()}
    m[f"{prefix}chance_map_all"] = chance
    if seen is not None:
        seen, m["seen_chance_map_all"] = seen["seen"], seen["chance"]
        m.update({f"seen_{k}": v for k, v in seen["contract"].items()})
    m["release_max"] = summary["test_selected_max"]
    m["release_max2"] = summary["test_selected_max2"]
    m["final_epoch"] = summary["final"]
    if "val_selected" in summary:
        m["val_selected"] = summary["val_selected"]
    if seen is not None:
        m["seen_release_max"] = seen["test_selected_max"]
        m["seen_final_epoch"] = seen["final"]
    if prefix == "gzs_":  # the contract's plain keys stay the comparable pooled numbers too
        m.update(summary["contract"], chance_map_all=chance)
    m["seconds_per_epoch"] = info["seconds_per_epoch"]
    folder.finish(folder.part_path(scenario), trained=info["trained"], final_step=cfg.epochs, dataset=ds.name,
                  method=cfg.method, seed=FLAGS.seed, flags=run.flag_values(), metrics=m, scenario=scenario,
                  config=dataclasses.asdict(cfg), warnings=warnings,
                  note=("release_max/max2 are selected on the TEST set (the release's MAX/MAX2) over the release's "
                        "four z-scored test-time variants; final_epoch and val_selected are the clean numbers; "
                        "i2t_map_all/t2i_map_all: cosine mAP@all of the final epoch on min-max scaled test inputs"))


def cli():
    define_flags()
    run.run_main(main, resumes=run.FROM_CHECKPOINT)


if __name__ == "__main__":
    cli()
