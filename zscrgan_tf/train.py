"""ZSCRGAN entry point, with the release's flags and folders (spec zscrgan.md §4-§6).

    python -m zscrgan_tf.train --dataset CUB          # reads datasets/CUB/ (the release's pickles)
    python -m zscrgan_tf.train --dataset synthetic    # embedded zero-shot data, runs anywhere
    python -m zscrgan_tf.train --dataset features --data_dir DIR   # generic feature folder

`python -m zscrgan_tf.run_exp` is the same program under the release's name. Writes
`ckt_logs/<ds>_logs/` (args.txt, run.json, flags.json, results.json, history.json, tb/,
checkpoints/) and `retrieved_res/<ds>_res/acc<P@50>.pkl` on every improvement. The release
loops until killed; here `--max_cycles` (or `--epochs` x `--cycles_per_epoch`) ends the run,
and re-running the same command resumes from the last cycle's checkpoint.
"""

from __future__ import annotations

import dataclasses
import os

from absl import flags

from common import run
from common.errors import ConfigError, DataError
from zscrgan_tf.config import RELEASE_NUMBER_EXAMPLE, SYNTHETIC_MAX_CYCLES, ZSCRGANConfig

FLAGS = flags.FLAGS


def define_flags():
    run.define_run_flags(default_dataset="CUB", default_epochs=5000, default_output_dir=None, dataset_help=(
        "The release's: a folder name under datasets/ holding its four pickles (AWA1, AWA2, CUB, FLO, NAB, WIKI; "
        "or --data_dir); synthetic[:small|medium|large]; or paired single-label data with unseen classes from "
        "--data_dir: features (with unseen_classes.txt) or xmn."))
    run.define_precision_flag("0.69-0.72x float32's time for ZSCRGAN at release widths on a CPU with AMX "
                              "(0.79-0.83x with AVX512_BF16 alone, before two speed-ups; docs/benchmarks.md). "
                              "Quality as float32's except on UCI, where both precisions stay at chance and "
                              "bfloat16's means are 1.1-1.4 float32 SDs away.")
    d = ZSCRGANConfig()
    # the release's argparse flags, with its defaults
    flags.DEFINE_integer("batch_size", d.batch_size, "Batch size (release 32).")
    flags.DEFINE_integer("gf_dim", d.gf_dim, "Generator hidden width; the second layer is twice this (release 2048).")
    flags.DEFINE_integer("df_dim", d.df_dim, "Critic hidden width (release 1024).")
    flags.DEFINE_integer("embed_dim", d.embed_dim, "Conditioning / common-space width (release 1024).")
    flags.DEFINE_float("CSEM_lr", d.CSEM_lr, "CSEM Adam learning rate (release 2e-3).")
    flags.DEFINE_float("generator_lr", d.generator_lr, "Generator (CA + G) RMSProp learning rate (release 2e-4).")
    flags.DEFINE_float("discriminator_lr", d.discriminator_lr, "Critic RMSProp learning rate (release 2e-4).")
    flags.DEFINE_float("kl_div_coefficient", d.kl_div_coefficient, "Weight of the KL term (release 1).")
    flags.DEFINE_float("mm_reg_coeff", d.mm_reg_coeff, "Weight of the L1 'max-margin' term (release 2).")
    flags.DEFINE_integer("z_dim", d.z_dim, "Noise width (release 256).")
    flags.DEFINE_float("clip_val", d.clip_val, "Critic weight clipping bound (release 0.01).")
    # the release's constants, exposed
    flags.DEFINE_integer("e_iters", d.e_iters, "E-step iterations per cycle (release 100).")
    flags.DEFINE_integer("m_iters", d.m_iters, "CSEM steps per cycle (release 100).")
    flags.DEFINE_integer("n_critic", d.n_critic, "Critic steps per generator step (release 5).")
    flags.DEFINE_integer("retrieve_k", d.retrieve_k, "K of Precision@K (release 50).")
    flags.DEFINE_integer("max_cycles", None, "Stop after this many cycles (default: epochs x cycles_per_epoch, "
                         f"i.e. unbounded in practice, as the release; {SYNTHETIC_MAX_CYCLES} for --dataset synthetic "
                         "unless --epochs or --cycles_per_epoch is given).")
    flags.DEFINE_integer("cycles_per_epoch", None,
                         "Cycles per epoch (default int(531000 / batch_size), the release's).")
    # switches; defaults keep the release (spec §9)
    flags.DEFINE_enum("kl_form", d.kl_form, ["zscrgan", "standard"],
                      "KL term: zscrgan (release) = its surrogate, standard = the true KL.")
    flags.DEFINE_bool("mm_hinge", d.mm_hinge, "Clamp the L1 margin term at zero (release: unclamped).")
    flags.DEFINE_float("mm_margin", d.mm_margin, "Margin of the L1 term (release: hard-coded 2.0).")
    flags.DEFINE_bool("csem_per_sample", d.csem_per_sample, "Per-sample softplus CSEM loss (release: batch means).")
    flags.DEFINE_enum("train_text", d.train_text, ["first", "cycle", "random"],
                      "Training text per class (release: first).")
    flags.DEFINE_bool("pad_partial_batches", d.pad_partial_batches,
                      "Zero-pad the short class block (release) instead of refilling it.")
    flags.DEFINE_enum("eval_mode", d.eval_mode, ["sample", "mean"],
                      "Queries: fresh noise (sample, release) or the CA mean with z = 0.")
    flags.DEFINE_enum("rmsprop_init", d.rmsprop_init, ["ones", "zeros"],
                      "RMSProp accumulators: TF1's ones (release) or Keras' zeros.")
    flags.DEFINE_integer("val_classes", 0, "Hold out this many seen classes as validation (an addition; "
                         "the release selects on the test set).")
    flags.DEFINE_string("res_dir", None, "Results pickles (default: retrieved_res/<dataset>_res as the release; "
                        "<output_dir>/retrieved_res when --output_dir is given).")


def _length_flags() -> list:
    """--epochs / --cycles_per_epoch when given (they set the run's length unless --max_cycles does)."""
    return [f"--{n}" for n in run.changed("epochs", "cycles_per_epoch")]


def validate_flags() -> None:
    run.require_positive("batch_size", "gf_dim", "df_dim", "embed_dim", "z_dim", "e_iters", "m_iters", "n_critic",
                         "retrieve_k", "epochs", "cycles_per_epoch", "max_cycles")
    run.require_nonnegative("val_classes", "histogram_every")
    if not FLAGS.dataset.strip():
        raise ConfigError("--dataset is empty: name the release's folder under datasets/ (AWA1, AWA2, CUB, FLO, "
                          "NAB, WIKI), or synthetic, or features")
    if FLAGS.max_cycles is not None and _length_flags():
        run.refuse_ignored([n.lstrip("-") for n in _length_flags()] + ["max_cycles"],
                           f"--max_cycles sets the run's length, so {' and '.join(_length_flags())} would be "
                           "ignored; give one or the other")
    for name in ("CSEM_lr", "generator_lr", "discriminator_lr", "clip_val"):
        run.require_float(name)
    for name in ("kl_div_coefficient", "mm_reg_coeff", "mm_margin"):
        run.require_float(name, 0.0, low_open=False)
    if FLAGS.batch_size < 2:
        raise ConfigError("--batch_size must be at least 2 (wrong pairs roll the batch)")


def load(name: str, data_dir: str | None, seed: int, by_default: bool = False):
    """`by_default`: the name is the flag's default (the release's CUB), not one the user typed."""
    from common import readers
    from common.datasets import FILE_READERS, load_dataset

    if name == "synthetic":  # enough seen classes (10 of 20) for zero-shot transfer
        name = "synthetic:medium"
    if name.startswith("synthetic") or (name in FILE_READERS and name != "zscrgan"):
        return load_dataset(name, data_dir, seed=seed)  # paired data: features, the other releases' formats
    folder = data_dir or os.path.join("datasets", name)
    if by_default and not os.path.exists(folder):
        raise DataError(f"--dataset defaults to the release's {name}, and its folder {folder}/ does not exist: "
                        "get its four pickles (docs/zscrgan.md), or run on the embedded data with --dataset "
                        "synthetic")
    return readers.read_zscrgan(folder, name=name)


def args_text(values: dict) -> str:
    """The release's args.txt: the printed argparse namespace."""
    return "Namespace(" + ", ".join(f"{k}={v!r}" for k, v in sorted(values.items())) + ")\n"


def config_from_flags() -> ZSCRGANConfig:
    names = [f.name for f in dataclasses.fields(ZSCRGANConfig)]
    return ZSCRGANConfig(**{n: FLAGS[n].value for n in names})


NOTE = ("Zero-shot text->image retrieval on the unseen classes. p50_best is the best Precision@50 over all cycles' "
        "TEST evaluations (the release's number, selected on the test set); p50_last is the last cycle's; "
        "p50_val_selected (with --val_classes) is the test value at the cycle with the best validation P@50. "
        "t2i_map_all is the last cycle's mAP over the whole ranking (cosine). `cmr export` exports the model of "
        "p50_val_selected's cycle (with --val_classes), else of p50_best's, kept under checkpoints/selected/. "
        "This file is rewritten after every cycle: `cycles` below `cycles_planned` is a run that was stopped there "
        "or is still running (the release's own schedule is stopped by hand).")


def main(argv):
    run.no_arguments(argv)
    validate_flags()
    ds_name = FLAGS.dataset
    tag = ds_name.replace(":", "_")
    out_dir = FLAGS.output_dir or os.path.join("ckt_logs", f"{tag}_logs")
    # the release's layout by default; a run given its own --output_dir keeps its pickles inside it,
    # so two runs never write (or, with --overwrite, remove) each other's acc<P@50>.pkl
    res_dir = FLAGS.res_dir or (os.path.join(FLAGS.output_dir, "retrieved_res") if FLAGS.output_dir
                                else os.path.join("retrieved_res", f"{tag}_res"))
    cfg = config_from_flags()
    from zscrgan_tf import data as zdata

    ds = load(ds_name, FLAGS.data_dir, FLAGS.seed, by_default=not FLAGS["dataset"].present)
    data = zdata.from_dataset(ds, FLAGS.val_classes, FLAGS.seed)
    if not data.trainids:
        raise ConfigError(f"{ds.where}: no seen class to train on")
    cycles_per_epoch = FLAGS.cycles_per_epoch or int(RELEASE_NUMBER_EXAMPLE / cfg.batch_size)
    if FLAGS.max_cycles is not None:
        max_cycles = FLAGS.max_cycles
    elif ds_name.startswith("synthetic") and not _length_flags():
        max_cycles = SYNTHETIC_MAX_CYCLES
    else:
        max_cycles = FLAGS.epochs * cycles_per_epoch
    n_img = {c: data.image_count[c] for c in data.trainids}
    print(f"{ds.name}: {len(data.trainids)} seen classes ({sum(n_img.values())} images, {len(data.texts)} texts), "
          f"{len(set(data.test.query_labels.tolist()))} unseen classes ({len(data.test.gallery)} gallery images, "
          f"{len(data.test.queries)} query texts); dims image {data.image_dim}, text {data.text_dim}; "
          f"chance P@{cfg.retrieve_k} ~ {data.test.chance_p_at_k:.4f}; up to {max_cycles} cycles", flush=True)
    print(data.held_out, flush=True)
    warnings = run.data_warnings(ds, standard=False)  # zero-shot: test classes are unseen by design
    from common import driver

    flag_dict = run.flag_values()
    with run.run_folder(ds.fingerprint(), max_cycles, ("max_cycles", "epochs", "cycles_per_epoch"), out_dir,
                        unit="cycle", extra_paths=[os.path.abspath(res_dir)]) as folder:
        run.import_tensorflow()  # a refused run has stopped above, before TensorFlow loads
        warnings += run.set_precision()
        from common import export, io, training
        from zscrgan_tf.task import ZSCRGANTask, ZSCRGANTrainer

        training.set_seed(FLAGS.seed)
        replicas = run.replicas()
        if replicas.is_chief:
            with io.atomic_open(os.path.join(out_dir, "args.txt")) as f:
                f.write(args_text(flag_dict))
        task = ZSCRGANTask(ZSCRGANTrainer(cfg, data, replicas), data, out_dir, res_dir, max_cycles)
        if replicas.is_chief:
            export.write_spec(out_dir, **task.encoders())

        def results(history):
            return dict(dataset=ds.name, method="zscrgan", seed=FLAGS.seed, flags=flag_dict,
                        metrics=task.summary(history), required=("t2i_map_all",), note=NOTE, warnings=warnings,
                        cycles_planned=max_cycles)

        # results.json stays current after every cycle (the release wrote its pickles each cycle)
        # the run's length is not a config field (the release looped until killed): HParams shows it too
        hparams = dict(dataclasses.asdict(cfg), max_cycles=max_cycles)
        result = driver.fit(task, out_dir, driver.FitOptions(**run.fit_flags(), hparams=hparams),
                            on_record=lambda history: folder.write_results(out_dir, **results(history)))
        final = results(result.history)
        folder.finish(out_dir, trained=result.trained > 0, final_step=max_cycles, **final)
        summary = final["metrics"]
    print(f"P@{cfg.retrieve_k}: best {summary['p50_best']:.4f} (cycle {summary['p50_best_cycle']}, selected on test, "
          f"as the release), last {summary['p50_last']:.4f}, chance {summary['p50_chance']:.4f}; "
          f"t2i mAP@all {summary['t2i_map_all']:.4f} (chance {summary['chance_map_all']:.4f})")
    if "p50_val_selected" in summary:
        print(f"P@{cfg.retrieve_k} at the cycle selected on validation (the fair number): "
              f"{summary['p50_val_selected']:.4f} (cycle {summary['p50_val_selected_cycle']})")
    print(f"results in {os.path.join(out_dir, 'results.json')}")


def cli():
    define_flags()
    run.run_main(main, resumes=run.FROM_CHECKPOINT)


if __name__ == "__main__":
    cli()
