"""The run contract every method entry point follows.

Flags `--dataset --data_dir --output_dir --seed --epochs`; outputs
`<output_dir>/results.json`, `<output_dir>/flags.json`, TensorBoard logs under
`<output_dir>/tb`. `results.json` always carries `i2t_map_all` / `t2i_map_all` (mAP over the
whole ranking from `common.metrics`) so every method compares on one scale; zero-shot runs
add `seen_*`, generalized zero-shot runs `gzs_*` (see `write_results`).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable, Optional

from absl import app, flags

from common import io
from common.errors import ConfigError, DataError, DivergenceError

REQUIRED_METRICS = ("i2t_map_all", "t2i_map_all")


def define_run_flags(default_dataset: str = "synthetic", default_epochs: Optional[int] = None,
                     default_output_dir: str = "runs/latest") -> None:
    """Define the contract's flags (call once, at import time of an entry module)."""
    flags.DEFINE_string("dataset", default_dataset,
                        "synthetic[:small|medium|large], synthetic-multilabel, features, "
                        "wikipedia, nuswide, xmn, zscrgan, iapr.")
    flags.DEFINE_string("data_dir", None, "Folder with the dataset's files (not needed for synthetic).")
    flags.DEFINE_string("output_dir", default_output_dir,
                        "Where results.json, flags.json, tb/ and checkpoints/ are written.")
    flags.DEFINE_integer("seed", 0, "Seed for data generation, initialisation and sampling.")
    flags.DEFINE_integer("epochs", default_epochs, "Training epochs (default: the release's).")
    flags.DEFINE_enum("distribute", "none", ["none", "mirrored", "multiworker"],
                      "none: one device; mirrored: every local GPU (tf.distribute.MirroredStrategy); multiworker: "
                      "the machines in TF_CONFIG (MultiWorkerMirroredStrategy). --batch_size stays the global batch.")


def define_execution_flags() -> None:
    """How the training loop runs (methods whose epochs run in the graph, `training.EpochRunner`)."""
    flags.DEFINE_integer("steps_per_execution", 0, lower_bound=0,
                         help="Batches per compiled call: 0 = a whole epoch in one call (the fastest), 1 = one "
                              "call per batch (per-batch output as it happens).")
    flags.DEFINE_bool("jit_compile", None, "Compile the training loop (JFSE: its step) with XLA. Default: on with one "
                      "device (1.4-2x faster per epoch on CPU, docs/benchmarks.md), off under --distribute.")


def jit_compile(replicas) -> bool:
    """--jit_compile resolved: XLA by default on one device; not combined with a strategy (the
    replicas' collectives inside an XLA cluster are untested here)."""
    value = flags.FLAGS.jit_compile
    if value and replicas.strategy is not None:
        raise ConfigError("--jit_compile is not supported with --distribute (drop one of them)")
    return replicas.strategy is None if value is None else bool(value)


def replicas():
    """The `--distribute` strategy as a `common.distribute.Replicas`."""
    from common import distribute

    return distribute.Replicas(distribute.make_strategy(flags.FLAGS.distribute))


PROJECT_MODULES = ("__main__", "common", "tools", "acmr_tf", "jfse_tf", "zscrgan_tf", "cmhash_tf")


def flag_values() -> dict:
    """This project's flags as a plain dict (for flags.json); TF's and absl's own are left out."""
    values = {}
    for module, flag_list in flags.FLAGS.flags_by_module_dict().items():
        # the running script is keyed by its path ("tools/baseline.py" under `python -m`)
        if module.endswith(".py") or module.split(".")[0] in PROJECT_MODULES:
            values.update({f.name: f.value for f in flag_list})
    return values


def require_positive(*names: str) -> None:
    """Each named integer flag, when set, must be >= 1 (epochs, batch sizes, widths)."""
    for name in names:
        value = flags.FLAGS[name].value
        if value is not None and value < 1:
            raise ConfigError(f"--{name} must be a positive integer, got {value}")


def tensorboard_dir(output_dir: str) -> str:
    return os.path.join(output_dir, "tb")


def checkpoint_dir(output_dir: str) -> str:
    return os.path.join(output_dir, "checkpoints")


def write_results(output_dir: str, *, dataset: str, method: str, seed: int, flag_dict: dict,
                  metrics: dict, text_to_image_only: bool = False, required=None, **extra) -> dict:
    """Validate and atomically write results.json and flags.json.

    `metrics` holds the method's headline numbers under their true names plus the
    contract's `i2t_map_all` / `t2i_map_all` (a text->image-only method: `t2i_map_all`; a
    single-modality run names its own `required` metrics).
    """
    if required is None:
        required = ("t2i_map_all",) if text_to_image_only else REQUIRED_METRICS
    missing = [k for k in required if k not in metrics]
    if missing:
        raise ConfigError(f"results for {method} lack the contract's metrics {missing}")
    results = {"dataset": dataset, "method": method, "seed": seed, "flags": flag_dict,
               "metrics": metrics, "written_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra}
    results.update({k: v for k, v in metrics.items()})
    io.write_json(os.path.join(output_dir, "flags.json"), flag_dict)
    io.write_json(os.path.join(output_dir, "results.json"), results)
    return results


def run_main(main: Callable) -> None:
    """`absl.app.run(main)` with one-line errors and no traceback for what a user can fix:
    unknown or invalid flags, data and configuration errors and unreadable/unwritable paths exit
    with code 2; a diverged training (NaN/inf loss) exits with code 3."""

    def parse(argv):
        try:
            return flags.FLAGS(argv)
        except flags.Error as e:
            print(f"error: {e} (see --helpfull)", file=sys.stderr)
            sys.exit(2)

    def wrapped(argv):
        try:
            return main(argv)
        except (DataError, ConfigError) as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except DivergenceError as e:  # not bad input: the run itself went wrong
            print(f"error: training diverged: {e}", file=sys.stderr)
            sys.exit(3)
        except OSError as e:  # e.g. an output folder that cannot be created or written
            where = e.filename if e.filename is not None else ""
            print(f"error: {where}: {e.strerror or e}", file=sys.stderr)
            sys.exit(2)

    app.run(wrapped, flags_parser=parse)
