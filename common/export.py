"""What a run needs to rebuild its two encoders: `encoders.json` in the run folder.

Every method's entry point writes one (`write_spec`) before training; `tools.export` reads it
(`load_encoders`), rebuilds the encoder models, restores them from the run's latest checkpoint
and saves a SavedModel. A spec names models (`module:Class` + constructor kwargs, keyed by
their name in the checkpoint) and, per modality, the input width and how to embed: the output
of one model, or a function `module:fn(models, x)` for composite encoders.
"""

from __future__ import annotations

import importlib
import os
from typing import Optional

import tensorflow as tf

from common import io, training
from common.errors import DataError

SPEC = "encoders.json"


def _ref(obj) -> str:
    return f"{obj.__module__}:{obj.__qualname__}"


def _resolve(ref: str):
    module, _, name = ref.partition(":")
    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def write_spec(out_dir: str, method: str, models: dict, image: dict, text: dict, hash_codes: bool = False,
               notes: str = "") -> None:
    """`models`: {checkpoint key: (class, kwargs)}; `image` / `text`: {"dim": d, "model": key} or
    {"dim": d, "fn": function(models, x)}."""
    spec = {"method": method, "hash_codes": hash_codes, "notes": notes,
            "models": {k: {"class": _ref(cls), "kwargs": kwargs} for k, (cls, kwargs) in models.items()}}
    for side, how in (("image", image), ("text", text)):
        spec[side] = {"dim": int(how["dim"]), **({"fn": _ref(how["fn"])} if "fn" in how else {"model": how["model"]})}
    io.write_json(os.path.join(out_dir, SPEC), spec)


class Encoders(tf.Module):
    """The restored encoder models and the two embedding functions of one run."""

    def __init__(self, spec: dict, models: dict):
        super().__init__(name="encoders")
        self.spec, self.models = spec, models
        self._fns = {}
        for side in ("image", "text"):
            how = spec[side]
            if "fn" in how:
                fn = _resolve(how["fn"])
                self._fns[side] = lambda x, fn=fn: fn(self.models, x)
            else:
                self._fns[side] = lambda x, key=how["model"]: self.models[key](x)

    def embed(self, side: str, x):
        return self._fns[side](tf.convert_to_tensor(x, tf.float32))


def load_encoders(run_dir: str, checkpoint: Optional[str] = None) -> Encoders:
    """Rebuild and restore the encoders of the run in `run_dir` (latest checkpoint by default)."""
    path = os.path.join(run_dir, SPEC)
    if not os.path.exists(path):
        raise DataError(f"{run_dir}: no {SPEC}; is this the output folder of a training run "
                        "(for the JFSE demo: one scenario's subfolder, for cmhash: bits_<K>/)?")
    spec = io.read_json(path)
    models = {}
    for key, m in spec["models"].items():
        models[key] = _resolve(m["class"])(**m["kwargs"], name=key)
    enc = Encoders(spec, models)
    for side in ("image", "text"):  # build every variable before restoring
        enc.embed(side, tf.zeros((1, spec[side]["dim"])))
    ckpt_dir = os.path.join(run_dir, training.CHECKPOINTS)
    if checkpoint is not None and not os.path.exists(checkpoint + ".index"):
        raise DataError(f"--checkpoint {checkpoint}: no such checkpoint (its .index file is missing); the run's "
                        f"checkpoints are {ckpt_dir}/ckpt-N")
    checkpoint = checkpoint or training.latest_checkpoint(ckpt_dir)
    if checkpoint is None:
        raise DataError(f"{ckpt_dir}: no checkpoint to export (train first, or pass the checkpoint path)")
    # each model's variables by their own names (see training.variable_index)
    indexes = {f"{k}__variables": training.variable_index(m) for k, m in models.items()}
    status = tf.train.Checkpoint(**indexes).restore(checkpoint)
    status.expect_partial()  # optimizers, critics and data position are not part of the encoders
    try:
        status.assert_existing_objects_matched()
    except AssertionError as e:
        raise DataError(f"{checkpoint}: does not hold the encoders described in {path} (a checkpoint written "
                        f"before encoder indexes were added cannot be exported; {str(e)[:300]})") from None
    return enc
