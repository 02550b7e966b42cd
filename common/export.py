"""What a run needs to rebuild its two encoders: `encoders.json` in the run folder.

Every method's entry point writes one (`write_spec`) before training; `tools.export` reads it
(`load_encoders`), rebuilds the encoder models, restores them from the run's latest checkpoint
and saves a SavedModel. A spec names models (`module:Class` + constructor kwargs, keyed by
their name in the checkpoint) and, per modality, the input width and how to embed: the output
of one model, or a composite Keras model class built from several (ZSCRGAN's text side).
"""

from __future__ import annotations

import importlib
import os
import re
from typing import Optional

import tensorflow as tf

from common import driver, io, training
from common.errors import DataError, op_error_reason

SPEC = "encoders.json"


def _ref(obj) -> str:
    return f"{obj.__module__}:{obj.__qualname__}"


def _resolve(ref: str):
    module, _, name = ref.partition(":")
    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def write_spec(out_dir: str, method: str, models: dict, image: Optional[dict], text: dict, hash_codes: bool = False,
               notes: str = "") -> None:
    """`models`: {checkpoint key: (class, kwargs)}; `image` / `text`: {"dim": d, "model": key}, or
    {"dim": d, "composite": class, "args": [keys]} for an encoder made of several models (a Keras
    model class taking those models); `image` None for a model of the text side only (tag hashing)."""
    spec = {"method": method, "hash_codes": hash_codes, "notes": notes,
            "models": {k: {"class": _ref(cls), "kwargs": kwargs} for k, (cls, kwargs) in models.items()}}
    for side, how in (("image", image), ("text", text)):
        if how is None:
            continue
        if "composite" in how:
            spec[side] = {"dim": int(how["dim"]), "composite": _ref(how["composite"]), "args": list(how["args"])}
        else:
            spec[side] = {"dim": int(how["dim"]), "model": how["model"]}
    io.write_json(os.path.join(out_dir, SPEC), spec)


def sides(spec: dict) -> list:
    """The modalities a spec has encoders for: both, or the text side of a tag hashing run."""
    return [side for side in ("image", "text") if side in spec]


class Encoders(tf.Module):
    """The restored encoder models of one run: one Keras model per modality (`encoder(side)`)."""

    def __init__(self, spec: dict, models: dict):
        super().__init__(name="encoders")
        self.spec, self.models = spec, models
        self.encoders = {}
        for side in sides(spec):
            how = spec[side]
            if "composite" in how:
                self.encoders[side] = _resolve(how["composite"])(*[models[k] for k in how["args"]],
                                                                 name=f"{side}_encoder")
            else:
                self.encoders[side] = models[how["model"]]

    def encoder(self, side: str):
        return self.encoders[side]

    def embed(self, side: str, x):
        return self.encoders[side](tf.convert_to_tensor(x, tf.float32))


def _check_shapes(checkpoint: str, indexes: dict) -> None:
    stored = dict(tf.train.list_variables(checkpoint))
    for key, index in indexes.items():
        for i, v in enumerate(index.vars):
            shape = stored.get(f"{key}/vars/{i}/.ATTRIBUTES/VARIABLE_VALUE")
            if shape is None or list(shape) != list(v.shape):
                found = "missing" if shape is None else f"{tuple(shape)} in the checkpoint"
                raise ValueError(f"{key.removesuffix('__variables')} variable {i} of shape {tuple(v.shape)}: {found}")


def resolve_checkpoint(ckpt_dir: str, given: str) -> str:
    """A checkpoint as a user names it: its path prefix, one of its files (`ckpt-7.index`), its
    name or number inside the run's checkpoints (`ckpt-7`, `7`), `latest`, or `selected` (the model
    of the epoch the results report, for a run that selects one). Missing: the error lists those kept."""
    if given == "latest":
        latest = training.latest_checkpoint(ckpt_dir)
        if latest is None:
            raise DataError(f"--checkpoint latest: {ckpt_dir} holds no checkpoint")
        return latest
    if given == training.SELECTED:
        chosen = training.selected_checkpoint(ckpt_dir)
        if chosen is None:
            raise DataError(f"--checkpoint selected: this run keeps no selected model (its results describe its "
                            f"latest checkpoint in {ckpt_dir})")
        return chosen["path"]
    base = re.sub(r"\.(index|data-\d+-of-\d+)$", "", given)
    candidates = [base]
    if os.sep not in base:
        candidates.append(os.path.join(ckpt_dir, base if not base.isdigit() else f"ckpt-{base}"))
    for path in candidates:
        if os.path.exists(path + ".index"):
            return path
    kept = sorted((n[:-len(".index")] for n in (os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir) else [])
                   if n.endswith(".index")), key=lambda n: int(n.rsplit("-", 1)[-1]) if n[-1].isdigit() else -1)
    have = f"the run keeps {', '.join(kept)} in {ckpt_dir}" if kept else f"{ckpt_dir} holds no checkpoint"
    raise DataError(f"--checkpoint {given}: no such checkpoint; {have}")


def default_checkpoint(ckpt_dir: str) -> Optional[str]:
    """The model a run's results describe: the selected one when the run keeps one (cmhash's epoch
    chosen on validation), else the latest checkpoint."""
    chosen = training.selected_checkpoint(ckpt_dir)
    return chosen["path"] if chosen else training.latest_checkpoint(ckpt_dir)


def restore_models(run_dir: str, checkpoint: Optional[str] = None, **models) -> str:
    """Restore built Keras models from a run's checkpoint by their names in it (the entry points'
    names: `image_projector`, `text_regressor`, `g_net`, `image_head`, ...); returns the checkpoint.
    By default the model the run's results describe (`default_checkpoint`); `checkpoint` as
    `resolve_checkpoint` reads it (`latest`, `ckpt-7`, a path).

    The supported way to load trained weights outside the export: Keras 3 models are not complete
    `tf.train.Checkpoint` dependencies, so each checkpoint holds every model's variables by position
    under `<name>__variables` (`training.variable_index`); `tf.train.Checkpoint(name=model)` alone
    would silently restore nothing.

        nets = ACMRNetworks(image_dim, text_dim, num_classes)
        restore_models("runs/acmr", image_projector=nets.image_projector, text_projector=nets.text_projector)
    """
    ckpt_dir = os.path.join(run_dir, training.CHECKPOINTS)
    if checkpoint is not None:
        checkpoint = resolve_checkpoint(ckpt_dir, checkpoint)
    checkpoint = checkpoint or default_checkpoint(ckpt_dir)
    if checkpoint is None:
        partial = os.path.join(ckpt_dir, training.PARTIAL, training.PARTIAL_FILE)
        if os.path.exists(partial):
            raise DataError(f"{ckpt_dir}: no whole epoch checkpointed yet, only the part-way checkpoint that "
                            f"{partial} names; resume the run to finish the epoch, or pass its path as --checkpoint")
        raise DataError(f"{ckpt_dir}: no checkpoint to export (train first, or pass the checkpoint path)")
    indexes = {f"{k}__variables": training.variable_index(m) for k, m in models.items()}
    try:
        _check_shapes(checkpoint, indexes)  # a failed restore leaves TensorFlow warnings at exit; a check does not
        status = tf.train.Checkpoint(**indexes).restore(checkpoint)
        status.expect_partial()  # optimizers, critics and data position are not restored here
        status.assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as e:  # other models, other shapes, damaged
        first = op_error_reason(e).split(". Showing")[0]  # one line, not the arrays TensorFlow lists
        raise DataError(f"{checkpoint}: does not hold models {sorted(models)} of these shapes ({first})") from None
    return checkpoint


def run_record(model_dir: str) -> Optional[dict]:
    """The run.json of the run a model folder belongs to: in the folder itself, or above it for a
    JFSE scenario or a cmhash code length; None when there is none."""
    for folder in (model_dir, os.path.dirname(os.path.abspath(model_dir))):
        path = os.path.join(folder, driver.RUN_FILE)
        if os.path.exists(path):
            return io.read_json(path)
    return None


def model_folder(run_dir: str) -> str:
    """The folder holding the model of a run: `run_dir` itself, or its one model sub-folder (a JFSE
    scenario, a cmhash code length); several are an error listing them."""
    if os.path.exists(os.path.join(run_dir, SPEC)):
        return run_dir
    subs = sorted(n for n in (os.listdir(run_dir) if os.path.isdir(run_dir) else [])
                  if os.path.exists(os.path.join(run_dir, n, SPEC)))
    if len(subs) == 1:
        return os.path.join(run_dir, subs[0])
    if subs:
        raise DataError(f"{run_dir} holds {len(subs)} models ({', '.join(subs)}); pass one of them, e.g. "
                        f"--run_dir {os.path.join(run_dir, subs[0])}")
    try:
        record = run_record(run_dir) or {}
        settings = record.get("settings") or {}
        text_only, e2e, program = settings.get("text_only"), settings.get("mode") == "e2e", record.get("program")
    except (DataError, TypeError, AttributeError):
        text_only = e2e = program = False
    if program == "tools.baseline":
        raise DataError(f"{run_dir}: a tools.baseline run (CCA, computed in closed form) has no trained encoders to "
                        "export; its results.json holds its numbers")
    if e2e:
        raise DataError(f"{run_dir}: an end-to-end hashing run's networks take images and token ids, not the "
                        "feature vectors an export serves, so it has no encoders.json; restore its networks "
                        "with common.export.restore_models(run_dir, image_net=..., text_net=...)")
    if text_only:
        raise DataError(f"{run_dir}: no {SPEC}: this --text_only hashing run was trained by a version that "
                        "exported nothing for tag-only runs; its checkpoints hold the text head "
                        "(common.export.restore_models(run_dir, text_head=...)), or train it again to export it")
    raise DataError(f"{run_dir}: no {SPEC}; is this the output folder of a training run?")


def load_encoders(run_dir: str, checkpoint: Optional[str] = None) -> Encoders:
    """Rebuild and restore the encoders of the run in `run_dir` (latest checkpoint by default)."""
    run_dir = model_folder(run_dir)
    path = os.path.join(run_dir, SPEC)
    spec = io.read_json(path)
    models = {key: _resolve(m["class"])(**m["kwargs"], name=key) for key, m in spec["models"].items()}
    enc = Encoders(spec, models)
    for side in sides(spec):  # composite encoders create nothing new, but build every variable
        enc.embed(side, tf.zeros((1, spec[side]["dim"])))
    ckpt_dir = os.path.join(run_dir, training.CHECKPOINTS)
    enc.kept = training.selected_checkpoint(ckpt_dir)  # the model the results report, when the run selects one
    if checkpoint is None and enc.kept is not None:
        checkpoint = enc.kept["path"]
    enc.checkpoint = restore_models(run_dir, checkpoint, **models)
    return enc
