"""ACMR entry point: flags -> config -> task -> run driver (spec acmr.md §4, §6).

    python -m acmr_tf.train --variant simple --dataset synthetic
    python -m acmr_tf.train --variant triplet --dataset wikipedia --data_dir data/wikipedia_dataset
    python -m acmr_tf.train --dataset nuswide --data_dir data/nuswide --preset paper
"""

from __future__ import annotations

import dataclasses
import os

from absl import flags

from acmr_tf.config import ACMRConfig
from common import run
from common.errors import ConfigError

FLAGS = flags.FLAGS


def define_flags():
    run.define_run_flags(default_output_dir="runs/acmr")
    flags.DEFINE_enum("variant", "simple", ["simple", "triplet"], "simple (contrastive) or triplet release file.")
    flags.DEFINE_enum("preset", "release", ["release", "paper"],
                      "release: what the demo code trains (the default reproduces it); paper: the published method.")
    flags.DEFINE_enum("arch", None, ["wiki", "nuswide"],
                      "Hidden widths and loss weights (default: nuswide for --dataset nuswide, else wiki).")
    flags.DEFINE_integer("batch_size", 64, "Batch size (release 64).")
    flags.DEFINE_float("lr", 1e-4, "Adam learning rate (release 1e-4).")
    flags.DEFINE_float("beta1", 0.5, "Adam beta_1 (release 0.5).")
    flags.DEFINE_integer("emb_dim", 40, "Common-space width (release 40).")
    flags.DEFINE_float("w_label", None, "Label-loss weight (default: the release's, 100 wiki, 50 nuswide).")
    flags.DEFINE_float("w_sim", None, "Similar-loss (simple) or triplet-loss (triplet) weight (release 1).")
    flags.DEFINE_float("w_dis", None, "Simple variant: dissimilar-loss weight (release: 0.02 wiki, 0.2 nuswide).")
    flags.DEFINE_float("margin", 0.1, "Triplet variant: margin mu (release 0.1).")
    flags.DEFINE_float("alpha", 5.0, "Triplet variant: weight alpha of the positive term (release 5).")
    flags.DEFINE_integer("top_k", 50, "K of the release's mAP@K (release 50).")
    flags.DEFINE_bool("adv_to_projectors", None,
                      "Train with L_emb + L_adv through the GRL (preset: release off, paper on).")
    flags.DEFINE_bool("train_label_classifier", None, "Train the label classifier (preset: release off, paper on).")
    flags.DEFINE_bool("shuffle", None, "Reshuffle train pairs each epoch (preset: release off, paper on).")
    flags.DEFINE_bool("eval_full_test", None,
                      "Evaluate all test pairs, not only full batches (preset: release off, paper on).")
    flags.DEFINE_bool("drop_remainder", True, "Drop the last partial train batch (release: on).")
    flags.DEFINE_bool("neg_tie_fix", False,
                      "Triplet variant: mine negatives among different-class items only (release: off).")
    flags.DEFINE_bool("shuffle_ids", True, "NUS-WIDE: shuffle the train and test id lists once before training, as "
                      "the release did (unseeded there; seeded by --seed here); --noshuffle_ids keeps pickled order.")
    run.define_execution_flags()
    run.define_precision_flag("on a CPU it is SLOWER for ACMR (1.1-1.8x epoch time at XMediaNet size with "
                              "AVX512_BF16 or AMX, docs/benchmarks.md): not worth it there.")


def validate_flags() -> None:
    run.require_positive("epochs", "batch_size", "emb_dim", "top_k")
    run.check_execution_flags()
    run.require_nonnegative("histogram_every")
    run.require_float("lr")
    run.require_float("beta1", 0.0, 1.0, low_open=False, high_open=True)
    for name in ("w_label", "w_sim", "w_dis", "margin", "alpha"):
        run.require_float(name, 0.0, low_open=False)
    if FLAGS.emb_dim < 4:
        raise ConfigError(f"--emb_dim must be at least 4 (the modality classifier is emb/2 -> emb/4 wide), "
                          f"got {FLAGS.emb_dim}")
    # a flag the chosen variant or data does not use is refused, not ignored
    changed = run.changed("margin", "alpha", "neg_tie_fix")
    if FLAGS.variant == "simple" and changed:
        run.refuse_ignored(changed, f"--{changed[0]} is a triplet-variant option (--variant triplet); the simple "
                           "variant's dissimilar loss keeps the release's fixed margin 0.1")
    if FLAGS.variant == "triplet" and FLAGS.w_dis is not None:
        run.refuse_ignored(["w_dis"], "--w_dis weighs the simple variant's dissimilar loss; the triplet variant "
                           "has none (--w_sim weighs its triplet loss)")
    if not FLAGS.shuffle_ids and FLAGS.dataset != "nuswide":
        run.refuse_ignored(["shuffle_ids"], "--noshuffle_ids applies to --dataset nuswide only (the other data keep "
                           "file order)")


def config_from_flags(dataset: str) -> ACMRConfig:
    arch = FLAGS.arch or ("nuswide" if dataset == "nuswide" else "wiki")
    fields = {f.name for f in dataclasses.fields(ACMRConfig)}
    values = {k: getattr(FLAGS, k) for k in fields if k in FLAGS and k not in ("arch", "seed", "epochs")}
    try:
        return ACMRConfig(arch=arch, epochs=FLAGS.epochs, seed=FLAGS.seed, **values).resolve()
    except ValueError as e:
        raise ConfigError(str(e)) from None


def release_order(ds, shuffle_ids: bool, seed: int):
    """(train, test) in the order the release trains and evaluates them: NUS-WIDE's id lists were
    shuffled once before training (so its batches and its evaluated first floor(N/64)*64 test pairs
    are a random subset), the Wikipedia pickles were used in file order."""
    if ds.name != "nuswide" or not shuffle_ids:
        return ds.train, ds.test
    import numpy as np

    rng = np.random.default_rng(seed)
    train_order, test_order = rng.permutation(len(ds.train)), rng.permutation(len(ds.test))
    print(f"nuswide: train and test id lists shuffled once (seed {seed}), as the release did before training")
    return ds.train.subset(train_order), ds.test.subset(test_order)


def main(argv):
    run.no_arguments(argv)
    validate_flags()
    cfg = config_from_flags(FLAGS.dataset)
    from common.dataset import require_classes
    from common.datasets import load_dataset

    ds = load_dataset(FLAGS.dataset, FLAGS.data_dir, seed=FLAGS.seed)
    if ds.multilabel:
        raise ConfigError(f"{ds.where}: ACMR uses single-label classes (its mask and label loss); got multi-hot labels")
    train, test = release_order(ds, FLAGS.shuffle_ids, FLAGS.seed)
    where = ds.where
    require_classes(train.labels, f"{where}: the train split", "ACMR's losses (pairs of different classes)")
    for name, split in (("test", test), ("val", ds.val)):
        if split is not None:
            require_classes(split.labels, f"{where}: the {name} split",
                            "a meaningful mAP (one class makes every item relevant)")
    cfg.check_split_sizes(len(train), len(test), where)
    val_part = "" if ds.val is None else f" / {len(ds.val)} val"
    print(f"{ds.name}: {len(train)} train{val_part} / {len(test)} test pairs, dims {ds.image_dim}/{ds.text_dim}, "
          f"train labels {int(train.labels.min())}..{int(train.labels.max())} (0-based), {ds.num_classes} classes; "
          f"ACMR {cfg.variant} ({cfg.arch} widths), preset {cfg.preset}, {run.counted(cfg.epochs, 'epoch')}",
          flush=True)
    warnings = run.data_warnings(ds)
    from common import driver

    with run.run_folder(ds.fingerprint(), cfg.epochs, fixed_length=run.GRL_SCHEDULE_LENGTH) as folder:
        # a refused run has stopped above, before TensorFlow loads
        run.import_tensorflow()
        warnings += run.set_precision()
        from acmr_tf.task import ACMRTask, ACMRTrainer
        from common import export, metrics, training

        training.set_seed(FLAGS.seed)
        replicas = run.replicas()
        trainer = ACMRTrainer(cfg, ds.image_dim, ds.text_dim, ds.num_classes, replicas=replicas)
        spe = run.steps_per_execution()
        task = ACMRTask(trainer, train, test, spe, run.jit_compile(replicas), val=ds.val)
        if replicas.is_chief:
            export.write_spec(folder.path, **task.encoders())
        result = driver.fit(task, folder.path, driver.FitOptions(
            **run.fit_flags(), batch_times=spe == 1, hparams=dataclasses.asdict(cfg)))
        final = dict(result.history[-1]["test"])  # the last epoch's evaluation (the same weights)
        k = cfg.top_k
        print(f"[Eval] transformed test features of the last epoch ({cfg.epochs - 1})")
        n = final["evaluated_pairs"]
        where = f"Euclidean mAP@{k} over {n} test pairs" + (f"; K >= {n}: every pair is ranked" if k >= n else "")
        print(f"[Eval - txt2img] mAP: {final[f't2i_map_at_{k}']:.6f} ({where})")
        print(f"[Eval - img2txt] mAP: {final[f'i2t_map_at_{k}']:.6f} ({where})")
        chance = metrics.expected_random_map(test.labels, test.labels)
        print(f"cosine mAP@all over all {len(test)} test pairs: i2t {final['i2t_map_all']:.4f}  "
              f"t2i {final['t2i_map_all']:.4f}  (chance {chance:.4f})")
        metrics_out = {**final, "chance_map_all": chance, "seconds_per_epoch": result.seconds_per_unit}
        if "val" in result.history[-1]:
            metrics_out.update({f"val_{k}": v for k, v in result.history[-1]["val"].items()})
            print(f"cosine mAP@all over the {len(ds.val)} val pairs (monitored, not used to select): "
                  f"i2t {metrics_out['val_i2t_map_all']:.4f}  t2i {metrics_out['val_t2i_map_all']:.4f}")
        folder.finish(folder.path, trained=result.trained > 0, final_step=cfg.epochs, dataset=ds.name,
                      method=f"acmr_{cfg.variant}", seed=FLAGS.seed, flags=run.flag_values(), metrics=metrics_out,
                      preset=cfg.preset, config=dataclasses.asdict(cfg), warnings=warnings,
                      note=(f"i2t/t2i_map_at_{k}: the release's metric (Euclidean, AP@{k} normalised by the relevant "
                            f"items in the top {k}, {final['evaluated_pairs']} test pairs); *_map_all: cosine "
                            "mAP@all on every test pair (comparable across ports)"))
        print(f"results in {os.path.join(folder.path, 'results.json')}")


def cli():
    define_flags()
    run.run_main(main, resumes=run.FROM_CHECKPOINT)


if __name__ == "__main__":
    cli()
