"""Export a trained run's two encoders as a SavedModel.

    python -m tools.export --run_dir runs/acmr --out exported/acmr
    python -m tools.export --run_dir runs/jfse/zs --out exported/jfse_zs
    python -m tools.export --run_dir runs/cmhash/bits_32 --out exported/cmhash32

Serving signatures: `embed_image(image: float32 [n, d_img])` and `embed_text(text: float32
[n, d_txt])`, each returning {"embedding": [n, e]}; hashing runs add `hash_image` / `hash_text`
returning {"codes": +-1 float32 [n, K]} (sign with sign(0) = +1); a `--text_only` (tag) hashing
run has the text side only. Load anywhere with
`tf.saved_model.load(DIR)`; nothing of this project is needed. Beside it, `image_encoder.keras`
and `text_encoder.keras` are the same encoders as Keras models (`keras.models.load_model`, after
importing the method's `model` module, which registers the classes), and `export.json` says which
run, method and checkpoint they came from.
"""

from __future__ import annotations

import os

from absl import flags

from common import driver, io, run
from common.errors import ConfigError

FLAGS = flags.FLAGS


def build_module(enc):
    """A tf.Module with the serving signatures of `enc` (a `common.export.Encoders`)."""
    import tensorflow as tf

    from common import export, training

    spec = enc.spec
    module = tf.Module()
    # variable indexes only: an attached Keras model would get a default signature traced (three inputs fail)
    module.indexes = [training.variable_index(m) for m in enc.models.values()]
    signatures = {}
    for side in export.sides(spec):  # both, or the text side of a tag hashing run
        spec_in = [tf.TensorSpec([None, spec[side]["dim"]], tf.float32, name=side)]
        signatures[f"embed_{side}"] = tf.function(
            lambda x, side=side: {"embedding": enc.embed(side, x)}, input_signature=spec_in)
        if spec.get("hash_codes"):
            signatures[f"hash_{side}"] = tf.function(
                lambda x, side=side: {"codes": tf.where(enc.embed(side, x) >= 0, 1.0, -1.0)}, input_signature=spec_in)
    for name, fn in signatures.items():
        setattr(module, name, fn)
    return module, signatures


def _run_summary(record: dict | None) -> dict | None:
    """What trained the exported model: the run's program, result-affecting flags, data fingerprint, code."""
    return None if record is None else {k: record.get(k) for k in ("program", "settings", "data", "code", "created")}


def export_run(run_dir: str, out: str, checkpoint: str | None = None, overwrite: bool = False) -> dict:
    """Save the SavedModel to `out`: a new or empty folder, or a previous export (it holds
    saved_model.pb) replaced with `overwrite` once the new one is complete. Any other folder is
    refused, never deleted."""
    import tensorflow as tf

    from common import export

    model_dir = export.model_folder(run_dir)  # a run with one model sub-folder names it
    if os.path.abspath(out) in (os.path.abspath(run_dir), os.path.abspath(model_dir)):
        raise ConfigError(f"--out {out} is the run folder itself; choose a new folder for the export")
    io.check_output_dir(out, overwrite, owned="saved_model.pb", what="export")
    run_dir = model_dir
    enc = export.load_encoders(run_dir, checkpoint)
    module, signatures = build_module(enc)
    with io.replacing_dir(out) as tmp:  # out: empty, or a previous export the user asked to replace (checked above)
        tf.saved_model.save(module, tmp, signatures=signatures)
        meta = {"run_dir": os.path.abspath(run_dir), "method": enc.spec["method"],
                "checkpoint": os.path.abspath(enc.checkpoint), "run": _run_summary(export.run_record(run_dir)),
                # the model the run's results report, when it selects one, and whether this export is it
                "selected": None if enc.kept is None else {
                    "epoch": enc.kept["epoch"], "name": enc.kept["name"], "criterion": enc.kept["criterion"],
                    "exported": os.path.abspath(enc.kept["path"]) == os.path.abspath(enc.checkpoint)},
                "signatures": sorted(signatures), "image_dim": enc.spec.get("image", {}).get("dim"),
                "text_dim": enc.spec["text"]["dim"], "notes": enc.spec.get("notes", "")}
        meta["keras_files"] = [f"{side}_encoder.keras" for side in export.sides(enc.spec)]
        for side, name in zip(export.sides(enc.spec), meta["keras_files"]):  # the same encoders for Keras
            enc.encoder(side).save(os.path.join(tmp, name))
        io.write_json(os.path.join(tmp, "export.json"), meta)
    return meta


def main(argv):
    run.no_arguments(argv)
    if not (FLAGS.run_dir and FLAGS.out):
        raise ConfigError("--run_dir and --out are required")
    if os.path.abspath(FLAGS.out) == os.path.abspath(FLAGS.run_dir):
        raise ConfigError(f"--out {FLAGS.out} is the run folder itself; choose a new folder for the export")
    io.check_output_dir(FLAGS.out, FLAGS.overwrite, owned="saved_model.pb", what="export")
    run.import_tensorflow()
    meta = export_run(FLAGS.run_dir, FLAGS.out, FLAGS.checkpoint, FLAGS.overwrite)
    kept = meta["selected"]
    which = (f" (the model results.json reports: {kept['name']}, selected on {kept['criterion']})"
             if kept and kept["exported"] else "")
    print(f"{FLAGS.out}: {meta['method']} encoders from {meta['checkpoint']}{which}; signatures "
          f"{', '.join(meta['signatures'])}")
    pid = driver.writer(meta["run_dir"])
    if pid and not FLAGS.checkpoint:
        print(f"note: {FLAGS.run_dir} is still training (PID {pid}); this export holds its model so far, "
              "not the final one")
    name = os.path.basename(meta["checkpoint"])
    if kept and not kept["exported"] and name != f"ckpt-{kept['epoch'] + 1}":  # ckpt-N: the state after epoch N - 1
        print(f"note: results.json reports {kept['name']} (selected on {kept['criterion']}, exported by default); "
              f"this export holds {name} instead")
    if meta["notes"]:
        print(f"note: {meta['notes']}")


def define_flags():
    flags.DEFINE_string("run_dir", None, "A training run's output folder (holds encoders.json and checkpoints/).")
    flags.DEFINE_string("out", None, "Folder for the SavedModel: new or empty (a previous export only with "
                        "--overwrite; nothing else is ever replaced).")
    flags.DEFINE_bool("overwrite", False, "Replace --out when it holds a previous export.")
    flags.DEFINE_string("checkpoint", None, "A specific checkpoint (default: the model the run's results describe: "
                        "for cmhash and ZSCRGAN the evaluation selected on validation, else on test; for ACMR and "
                        "JFSE the latest): its path, one of its files, its name or number in the run's checkpoints "
                        "(ckpt-7, 7), `latest` or `selected`.")


def cli():
    define_flags()
    run.run_main(main)


if __name__ == "__main__":
    cli()
