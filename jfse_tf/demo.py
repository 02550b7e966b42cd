"""JFSE / CFSA entry point (the project's main job).

    python -m jfse_tf.demo                                   # synthetic, scenarios standard + zs + gzs
    python -m jfse_tf.demo --method cfsa                     # CFSA preset: zero-shot only
    python -m jfse_tf.demo --dataset xmn --data_dir data/xmn --scenario zs   # the release's setting
    python -m jfse_tf.demo --dataset features --data_dir DIR # needs class_emb.npy, unseen_classes.txt

One sub-folder of --output_dir per trained scenario (`standard`, `zs`; `gzs` reuses the zs
model), each with results.json (run contract), flags.json, history.json, tb/ and checkpoints/.
Re-running the same command resumes from the last checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np

from absl import flags

from common import export, metrics, run, training
from common.datasets import load_dataset
from common.errors import ConfigError, DataError
from jfse_tf.config import JFSEConfig
from jfse_tf.model import Regressor
from jfse_tf.train import JFSETrainer, summarise

run.define_run_flags(default_output_dir="runs/jfse")
run.define_execution_flags()
flags.DEFINE_enum("method", "jfse", ["jfse", "cfsa"], "cfsa: zero-shot only, CMPM, no modality adversary.")
flags.DEFINE_enum("scenario", "all", ["all", "standard", "zs", "gzs"], "Retrieval scenario(s).")
flags.DEFINE_enum("align", "cmpm", ["cmpm", "cmmd", "cmca"], "Alignment loss in the two alignment slots.")
flags.DEFINE_integer("batch_size", 64, "Batch size (release 64).")
flags.DEFINE_integer("n_critic", 5, "Critic updates per batch (release 5).")
flags.DEFINE_float("lr", 1e-4, "Adam learning rate of all four optimisers (release 1e-4).")
flags.DEFINE_float("beta1", 0.5, "Adam beta_1 (release 0.5).")
flags.DEFINE_float("gp_lambda", 10.0, "Gradient-penalty weight (release 10).")
flags.DEFINE_integer("noise_dim", 300, "Generator noise width (release 300).")
flags.DEFINE_integer("hidden", 4096, "Hidden width of G, D and R (release 4096).")
flags.DEFINE_integer("eval_every", 2, "Evaluate every N epochs (release 2) and after the last.")
flags.DEFINE_enum("norm", "batch_minmax", ["batch_minmax", "none"],
                  "release: per-batch min-max of features and class embeddings; none: raw inputs.")
flags.DEFINE_bool("shuffle", False, "release: file order every epoch; --shuffle: reshuffle per epoch.")
flags.DEFINE_enum("eval_variants", "all", ["all", "minmax"],
                  "release: four test-time variants; minmax: only the one matching training.")
flags.DEFINE_bool("synthesize_unseen", False,
                  "Not in the release: in zs/gzs training the regressors also learn from features the "
                  "generators make for unseen classes from their class embeddings.")
for _key, _value in JFSEConfig().weights.items():
    flags.DEFINE_float(_key, _value, f"Loss weight {_key} (spec jfse.md §3.5; release {_value}).")
FLAGS = flags.FLAGS
SYNTHETIC_EPOCHS = 20  # demo-sized default on the synthetic data; files default to the release's 500


def make_config() -> JFSEConfig:
    weights = {k: getattr(FLAGS, k) for k in JFSEConfig().weights}
    cfg = JFSEConfig(method=FLAGS.method, align=FLAGS.align, batch_size=FLAGS.batch_size,
                     n_critic=FLAGS.n_critic, lr=FLAGS.lr, beta1=FLAGS.beta1, gp_lambda=FLAGS.gp_lambda,
                     noise_dim=FLAGS.noise_dim, hidden=FLAGS.hidden, eval_every=FLAGS.eval_every,
                     norm=FLAGS.norm, shuffle=FLAGS.shuffle, eval_variants=FLAGS.eval_variants,
                     synthesize_unseen=FLAGS.synthesize_unseen, seed=FLAGS.seed, weights=weights)
    cfg.epochs = FLAGS.epochs or (SYNTHETIC_EPOCHS if FLAGS.dataset.startswith("synthetic") else 500)
    return cfg.for_method()


def train_scenario(name, cfg, ds, train, eval_sets, val, out_dir, unseen=None, replicas=None):
    """Train (or resume) one model; returns (summary per evaluation set, seconds per epoch)."""
    training.set_seed(cfg.seed)  # each scenario's result is independent of the ones run before it
    if unseen is None:
        cfg = dataclasses.replace(cfg, synthesize_unseen=False)  # nothing unseen in the standard scenario
    unseen_emb = None
    if cfg.synthesize_unseen:
        try:
            unseen_emb = ds.class_embedding_rows(unseen)
        except DataError as e:
            raise DataError(f"--synthesize_unseen needs the unseen classes' embeddings (class_emb.npy "
                            f"with a row per class): {e}") from None
    trainer = JFSETrainer(cfg, ds.image_dim, ds.text_dim, ds.class_embeddings.shape[1], ds.num_classes,
                          unseen_class_emb=unseen_emb, unseen_classes=unseen, replicas=replicas)
    runner = trainer.make_runner(train, ds.class_embedding_rows(train.labels), FLAGS.steps_per_execution,
                                 run.jit_compile(trainer.replicas))
    reg = (Regressor, {"emb_dim": int(ds.class_embeddings.shape[1]), "hidden": cfg.hidden})
    if trainer.replicas.is_chief:
        export.write_spec(out_dir, cfg.method,
                          {"image_regressor": reg, "text_regressor": reg},
                          image={"dim": ds.image_dim, "model": "image_regressor"},
                          text={"dim": ds.text_dim, "model": "text_regressor"},
                          notes="The release's headline evaluation min-max scales each test split's features per "
                                "column (that split's own min and max) before embedding; do the same to compare.")
    objects = {m.name: m for group in trainer.nets.groups.values() for m in group}
    objects.update({f"opt_{g}": (o, trainer.nets.variables(g)) for g, o in trainer.optimizers.items()})
    state = training.RunState(out_dir, replicas=trainer.replicas, rng=trainer.rng, grl=trainer.grl_scale,
                              **objects)
    if state.resumed:
        print(f"[{name}] resumed after epoch {state.start_epoch - 1}")
    history = state.history
    start_epoch = state.start_epoch
    start = time.time()
    trainer.fit(runner, eval_sets, val=val, epochs=cfg.epochs, start_epoch=start_epoch,
                writer=training.SummaryWriter(run.tensorboard_dir(out_dir), trainer.replicas), on_eval=state.record,
                log=lambda text: print(f"[{name}] {text}", flush=True))
    if not history:
        raise ConfigError(f"{out_dir} already holds a finished run of {cfg.epochs} epochs with no history")
    seconds_per_epoch = (time.time() - start) / max(cfg.epochs - start_epoch, 1)
    return {s: summarise(history, s) for s in eval_sets}, seconds_per_epoch


def write(out_dir, ds, method, scenario, summary, seen=None, prefix="", seconds_per_epoch=None, cfg=None, chief=True):
    contract = {f"{prefix}{k}": v for k, v in summary["contract"].items()}
    m = dict(contract)
    if seen is not None:
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
        m.update(summary["contract"])
    if seconds_per_epoch is not None:
        m["seconds_per_epoch"] = seconds_per_epoch
    if not chief:  # another worker of a multi-machine run
        return
    run.write_results(out_dir, dataset=ds.name, method=method, seed=FLAGS.seed,
                      flag_dict=run.flag_values(), metrics=m, scenario=scenario,
                      config=dataclasses.asdict(cfg) if cfg else None,
                      note=("release_max/max2 are selected on the TEST set (the release's MAX/MAX2); "
                            "final_epoch and val_selected are the clean numbers"))


def _feasible(ds, scenarios):
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
        raise ConfigError(f"{ds.source or ds.name}: cannot run {scenarios}: " + "; ".join(drop.values()))
    return kept


def main(argv):
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments {argv[1:]}")
    run.require_positive("epochs", "batch_size", "n_critic", "noise_dim", "hidden", "eval_every")
    training.set_seed(FLAGS.seed)
    cfg = make_config()
    replicas = run.replicas()
    ds = load_dataset(FLAGS.dataset, FLAGS.data_dir, seed=FLAGS.seed)
    ds.class_embedding_rows(ds.train.labels)  # JFSE needs class embeddings: fail early and clearly
    scenarios = ["standard", "zs", "gzs"] if FLAGS.scenario == "all" else [FLAGS.scenario]
    if cfg.method == "cfsa":
        scenarios = ["zs"]
    scenarios = _feasible(ds, scenarios)
    print(f"{ds.name}: {len(ds.train)} train / {len(ds.test)} test pairs, dims {ds.image_dim}/{ds.text_dim}, "
          f"class embeddings {ds.class_embeddings.shape}; method {cfg.method}, align {cfg.align}, "
          f"{cfg.epochs} epochs, scenarios {scenarios}")
    table = []
    if "standard" in scenarios:
        out = os.path.join(FLAGS.output_dir, "standard")
        summ, spe = train_scenario("standard", cfg, ds, ds.train, {"test": ds.test}, ds.val, out, replicas=replicas)
        write(out, ds, cfg.method, "standard", summ["test"], seconds_per_epoch=spe, cfg=cfg,
                  chief=replicas.is_chief)
        table.append(("standard", summ["test"]["contract"]))
    if {"zs", "gzs"} & set(scenarios):
        zs = ds.zero_shot()
        out = os.path.join(FLAGS.output_dir, "zs")
        sets = {"unseen": zs.test_unseen}
        if len(zs.test_seen):
            sets.update(seen=zs.test_seen, pooled=zs.test_all)
        summ, spe = train_scenario("zs", cfg, ds, zs.train, sets, zs.val, out, unseen=zs.unseen_classes,
                                   replicas=replicas)
        if "zs" in scenarios:
            write(out, ds, cfg.method, "zs", summ["unseen"], seen=summ.get("seen"), seconds_per_epoch=spe, cfg=cfg,
                  chief=replicas.is_chief)
            table.append(("zs unseen", summ["unseen"]["contract"]))
            if "seen" in summ:
                table.append(("zs seen", summ["seen"]["contract"]))
            chance = metrics.expected_random_map(zs.test_unseen.labels, zs.test_unseen.labels)
            table.append(("chance (unseen)", {"i2t_map_all": chance, "t2i_map_all": chance}))
        if "gzs" in scenarios:
            write(os.path.join(FLAGS.output_dir, "gzs"), ds, cfg.method, "gzs", summ["pooled"],
                  prefix="gzs_", seconds_per_epoch=spe, cfg=cfg,
                  chief=replicas.is_chief)
            table.append(("gzs pooled", summ["pooled"]["contract"]))
    print(f"\n{cfg.method} on {ds.name}, cosine mAP@all at the final epoch (min-max test inputs):")
    print(f"{'scenario':<16} {'i2t':>7} {'t2i':>7} {'avg':>7}")
    for name, r in table:
        i2t, t2i = r["i2t_map_all"], r["t2i_map_all"]
        print(f"{name:<16} {i2t:7.4f} {t2i:7.4f} {(i2t + t2i) / 2:7.4f}")
    print(f"results under {FLAGS.output_dir}/<scenario>/results.json")


if __name__ == "__main__":
    run.run_main(main)
