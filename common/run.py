"""The command-line layer every entry point shares: run flags, flag validation, exit codes, quiet start.

Nothing here imports TensorFlow: entry modules validate flags and read data before TensorFlow
loads, so a bad flag or a missing file fails in a fraction of a second, and the TF C++ log level
can still be chosen (`quiet`). The run contract itself (results.json, the run folder, resume)
is in `common.driver`.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
from typing import Callable, Optional

import numpy as np
from absl import app, flags

from common import io
from common.errors import (OS_FAULTS, ConfigError, DataError, DivergenceError, op_error_line, op_error_reason,
                           tensorflow_oom)

# flags that change what is printed or where, never a number: left out of a run's fingerprint
LOGGING_FLAGS = frozenset({"output_dir", "overwrite", "extend", "log_every", "log_batches", "histogram_every",
                           "steps_per_execution", "res_dir", "profile_epoch", "checkpoint_minutes"})
# why a run trained with `common.layers.grl_schedule` (ACMR, JFSE) cannot be extended (`run_folder(fixed_length=)`)
GRL_SCHEDULE_LENGTH = ("the gradient-reversal weight follows a schedule over --epochs, so a longer run trains every "
                       "epoch differently")
PROJECT_MODULES = ("__main__", "common", "tools", "acmr_tf", "jfse_tf", "zscrgan_tf", "cmhash_tf")
VERBOSE_ENV = "CMR_VERBOSE"


def define_run_flags(default_dataset: str = "synthetic", default_epochs: Optional[int] = None,
                     default_output_dir: Optional[str] = "runs/latest", trains: bool = True,
                     dataset_help: Optional[str] = None) -> None:
    """The contract's flags (call once, from the entry module's `define_flags`); `trains` False
    (a closed-form baseline) leaves out the training-loop flags, which would do nothing there."""
    flags.DEFINE_string("dataset", default_dataset, dataset_help or
                        "synthetic[:small|medium|large], synthetic-multilabel, features, "
                        "wikipedia, nuswide, xmn, zscrgan, iapr, mirflickr.")
    flags.DEFINE_string("data_dir", None, "Folder with the dataset's files (not needed for synthetic).")
    if trains:
        folder_help = ("Run folder: results.json, flags.json, run.json, history.json, tb/, checkpoints/. "
                       "Re-running the same command resumes; other settings are refused unless --overwrite.")
    else:
        folder_help = ("Result folder: results.json, flags.json, run.json. Re-running the same command computes "
                       "the results again; other settings are refused unless --overwrite.")
    flags.DEFINE_string("output_dir", default_output_dir, folder_help)
    flags.DEFINE_bool("overwrite", False, "Start --output_dir over: remove this project's outputs in it (only "
                      f"those) and {'train from scratch' if trains else 'compute afresh'}.")
    flags.DEFINE_integer("seed", 0, "Seed for data generation, initialisation and sampling.", lower_bound=0,
                         upper_bound=2**32 - 1)  # NumPy's legacy seeding (Keras' set_random_seed) takes 32 bits
    if not trains:
        return
    flags.DEFINE_integer("epochs", default_epochs, "Training epochs (default: the release's).")
    flags.DEFINE_bool("extend", False, "Continue the run in --output_dir to a longer schedule: this command may "
                      "differ from the one that started it only by a larger --epochs (ZSCRGAN: --max_cycles, or "
                      "--epochs x --cycles_per_epoch), "
                      "and trains on from the last checkpoint as a run of that length would. ZSCRGAN and cmhash; "
                      "refused for ACMR and JFSE, whose adversarial schedules depend on --epochs.")
    flags.DEFINE_enum("distribute", "none", ["none", "mirrored", "multiworker"],
                      "none: one device; mirrored: every local GPU (tf.distribute.MirroredStrategy); multiworker: "
                      "the machines in TF_CONFIG (MultiWorkerMirroredStrategy). --batch_size stays the global batch.")
    flags.DEFINE_integer("histogram_every", 10, "TensorBoard weight histograms every N epochs/cycles and at the "
                         "last (0: none).", lower_bound=0)
    flags.DEFINE_integer("profile_epoch", None, "Record a TensorFlow profiler trace of this epoch (cycle), counted "
                         "from 1 as the progress lines count, into tb/plugins/profile of each model the run trains "
                         "(TensorBoard's Profile tab, with the tensorboard-plugin-profile package).", lower_bound=1)


def define_checkpoint_flag() -> None:
    """For methods that evaluate (and so checkpoint) every --eval_every epochs: checkpoints between."""
    flags.DEFINE_float("checkpoint_minutes", 10.0, "Besides the checkpoint at every evaluation (--eval_every), one at "
                       "the end of an epoch when this long has passed since the last (0: at evaluations only), so that "
                       "a stopped run loses at most about this much training (end-to-end hashing: also between "
                       "batches, part-way through an epoch). Results do not depend on it.",
                       lower_bound=0.0)


def define_precision_flag(speed: str) -> None:
    """`speed`: what mixed_bfloat16 measured for this method (docs/benchmarks.md), shown in --help."""
    flags.DEFINE_enum("precision", "float32", ["float32", "mixed_bfloat16"],
                      "float32 (the faithful setting) or mixed_bfloat16: layers compute in bfloat16, variables, "
                      "optimizer state, losses and metrics stay float32, each optimizer update runs as one XLA "
                      "computation (Keras mixed precision; docs/port_notes.md). "
                      f"mAP within float32's seed-to-seed spread on the data measured (docs/results.md); {speed}")


def cpu_isa() -> dict:
    """The CPU's bfloat16-related instruction-set flags (Linux /proc/cpuinfo; {} elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            present = set(next(line for line in f if line.startswith("flags")).split(":")[1].split())
    except (OSError, StopIteration):
        return {}
    return {name: name in present for name in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni")}


def data_warnings(ds, standard: bool = True, gallery=None, gallery_name: str = "gallery") -> list:
    """What is odd but not wrong about a dataset (`CrossModalDataset.warnings`; `standard`: a
    standard, not only zero-shot, result is computed), printed now and kept for results.json. A
    standard evaluation that cannot rank (every query relevant to every item of `gallery`, by default
    the database or the test split) is refused here."""
    if standard:
        ds.require_rankable(gallery, gallery_name)
    out = ds.warnings(standard)
    for w in out:
        print(f"warning: {w}", flush=True)
    return out


def set_precision(precision: Optional[str] = None) -> list:
    """Apply --precision as Keras' global dtype policy (call before any network is built); the
    warnings to keep with the results.

    Without a GPU, bfloat16 runs on oneDNN's CPU kernels: with AVX512_BF16 a 256x4096 by 4096x4096
    matmul takes 46 ms against float32's 90; with AVX-512 but no AVX512_BF16 they are emulated (223 ms
    against 83, measured by restricting oneDNN's ISA). A CPU without AVX-512 takes TensorFlow's own
    bfloat16 kernels (204 ms against 161 on an AVX2 AMD EPYC). Both are slower than float32: a warning.
    (Restricting oneDNN to AVX2 on an AVX-512 CPU aborts the process; a real AVX2 CPU does not.)
    """
    import keras

    precision = precision or flags.FLAGS.precision
    warnings = []
    if precision == "mixed_bfloat16":
        import tensorflow as tf

        isa = cpu_isa()
        if isa and not tf.config.list_physical_devices("GPU"):
            if not isa["avx512f"]:
                warnings.append("this CPU has no AVX-512: bfloat16 matmuls take TensorFlow's generic kernels, about "
                                "1.3x slower than float32 (docs/benchmarks.md); --precision float32 is faster here")
            elif not isa["avx512_bf16"]:
                warnings.append("this CPU has no AVX512_BF16: bfloat16 matmuls are emulated, about 2.7x slower than "
                                "float32 (docs/benchmarks.md); --precision float32 is faster here")
            for w in warnings:
                print(f"warning: {w}", flush=True)
    keras.mixed_precision.set_global_policy(precision)
    from common import distribute

    distribute.fuse_updates(precision == "mixed_bfloat16")  # its step runs without XLA on a CPU
    distribute.share_weight_casts(precision == "mixed_bfloat16")
    return warnings


def define_execution_flags(default_steps: int = 0, why: str = "") -> None:
    """How the in-graph training loop runs (methods whose epochs run in `training.EpochRunner`).
    `default_steps` > 0 (`why` says why): calls of that many batches by default, for a method whose
    epochs are long enough to want a stop, a checkpoint or a progress line part-way through them."""
    flags.DEFINE_integer("steps_per_execution", default_steps,
                         "Batches per compiled call: 0 = a whole epoch in one call (the fastest for small steps), "
                         "1 = one call per batch (the default with --log_batches); with several calls per epoch a "
                         f"stop or --checkpoint_minutes checkpoints part-way through it{why}. Results do not depend "
                         "on it.", lower_bound=0)
    flags.DEFINE_bool("jit_compile", None, "Compile the training loop (JFSE: its step) with XLA. Default: on with one "
                      "device (1.3-2.1x faster per epoch on CPU, docs/benchmarks.md), off under --distribute and "
                      "under --precision mixed_bfloat16 without a GPU (XLA's CPU bfloat16 is no faster).")
    flags.DEFINE_bool("log_batches", False, "Print the release's per-batch loss lines (each with the time its "
                      "batch ended) besides the one progress line per epoch.")
    flags.DEFINE_integer("log_every", 1, "With --log_batches: every N-th batch line.")


def fit_flags() -> dict:
    """The driver's logging options (`driver.FitOptions`) from the flags this entry point defines."""
    out = {name: flags.FLAGS[name].value for name in ("histogram_every", "log_batches", "log_every")
           if name in flags.FLAGS}
    if "checkpoint_minutes" in flags.FLAGS:
        out["checkpoint_seconds"] = 60.0 * flags.FLAGS.checkpoint_minutes
    if "profile_epoch" in flags.FLAGS and flags.FLAGS.profile_epoch:
        out["profile_unit"] = flags.FLAGS.profile_epoch - 1
    return out


def changed(*names: str) -> list:
    """The named flags whose value is not their default (given, and not given as the default)."""
    return [n for n in names if flags.FLAGS[n].value != flags.FLAGS[n].default]


def refuse_ignored(names, message: str) -> None:
    """A flag the run would ignore is an error (`message`), except when this command resumes a run that
    was started with it (the same value in its run.json, from before such flags were refused): then a
    warning, so that the run can finish as it began."""
    from common import driver

    out = flags.FLAGS.output_dir if "output_dir" in flags.FLAGS else None
    recorded = {}
    if out and "overwrite" in flags.FLAGS and not flags.FLAGS.overwrite:
        try:
            recorded = io.read_json(os.path.join(out, driver.RUN_FILE)).get("settings") or {}
        except (DataError, OSError, AttributeError):  # no run there, or not one this check can read
            recorded = {}
    recorded, now = driver.absolute_paths(recorded), settings()
    if names and all(n in recorded and recorded[n] == now.get(n, flags.FLAGS[n].value) for n in names):
        print(f"warning: {', '.join('--' + n for n in names)} would be ignored here; accepted because the run in "
              f"{out} was started with the same value (it resumes as it began)", flush=True)
        return
    raise ConfigError(message)


def check_execution_flags() -> None:
    """The loop flags of `define_execution_flags` that only act together: one given alone would be ignored."""
    require_positive("log_every")
    if changed("log_every") and not flags.FLAGS.log_batches:
        raise ConfigError("--log_every sets which of the --log_batches lines are printed; pass --log_batches too")
    between = "checkpoint_minutes" in flags.FLAGS and changed("checkpoint_minutes")
    if between and flags.FLAGS.distribute == "multiworker":
        raise ConfigError("--checkpoint_minutes is not used with --distribute multiworker: its workers save together, "
                          "at the evaluations (--eval_every)")


def flag_values() -> dict:
    """This project's flags as a plain dict (flags.json); TF's and absl's own are left out."""
    values = {}
    for module, flag_list in flags.FLAGS.flags_by_module_dict().items():
        # the running script is keyed by its path ("tools/baseline.py" under `python -m`)
        if module.endswith(".py") or module.split(".")[0] in PROJECT_MODULES:
            values.update({f.name: f.value for f in flag_list})
    return values


def expand_home() -> None:
    """`--output_dir=~/runs/x`: the shell leaves a `~` after `=` alone, and a folder named `~` would be
    made in the working directory; every project flag whose value starts with `~` is a home path."""
    for name, value in flag_values().items():
        if isinstance(value, str) and value.startswith("~"):
            flags.FLAGS[name].value = os.path.expanduser(value)


def _a(word: str) -> str:
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


def flagfile_text() -> str:
    """The flags the command gave (and its --output_dir), in absl's flagfile format: `--flagfile
    <run>/flags.txt` re-runs (resumes) the run. Only the given ones: a default that depends on
    whether a flag was given (cmhash end to end takes the release's --lr unless one is given) must
    resolve as it did (flags.json has every value). `--overwrite` is left out: it would start the
    run it names over. Paths are absolute, so the file works from any folder."""
    from common import driver

    lines = []
    if _PROGRAM:  # absl skips '#' lines; another program given this file says whose it is
        lines.append(f"# flags of {_a(_PROGRAM)} run: `python -m {_PROGRAM} --flagfile <this file>` repeats it")
    for name in sorted(flag_values()):
        if name in ("overwrite", "extend"):  # re-running a run's flag file resumes it as it now is
            continue
        if not flags.FLAGS[name].present and name != "output_dir":
            continue
        text = flags.FLAGS[name].serialize()
        if name in driver.PATH_FLAGS and flags.FLAGS[name].value:  # the file works from any folder
            text = f"--{name}={driver.absolute_paths({name: flags.FLAGS[name].value})[name]}"
        if text:  # a flag left at None serialises to nothing: its default applies again
            lines.append(text)
    return "\n".join(lines) + "\n"


def run_folder(data: dict, length: Optional[int] = None, length_flags=("epochs",), output_dir: Optional[str] = None,
               **kwargs):
    """The entry point's `driver.RunFolder`: its --output_dir, fingerprint (`settings`), --overwrite,
    --extend and chief role from the flags; `length`: the epochs (cycles) this command plans."""
    from common import driver

    extend = "extend" in flags.FLAGS and flags.FLAGS.extend
    return driver.RunFolder(output_dir or flags.FLAGS.output_dir, settings(), data, overwrite=flags.FLAGS.overwrite,
                            chief=is_chief(), length=length, length_flags=length_flags, extend=extend, **kwargs)


def settings() -> dict:
    """Every result-affecting flag (the run's fingerprint): all project flags but `LOGGING_FLAGS`, paths
    absolute."""
    from common import driver

    return driver.absolute_paths({k: v for k, v in sorted(flag_values().items()) if k not in LOGGING_FLAGS})


# --------------------------------------------------------------------------- validation

def require_positive(*names: str) -> None:
    """Each named integer flag, when set, must be >= 1 (epochs, batch sizes, widths)."""
    for name in names:
        value = flags.FLAGS[name].value
        if value is not None and value < 1:
            raise ConfigError(f"--{name} must be a positive integer, got {value}")


def require_nonnegative(*names: str) -> None:
    for name in names:
        value = flags.FLAGS[name].value
        if value is not None and value < 0:
            raise ConfigError(f"--{name} must be 0 or more, got {value}")


def require_float(name: str, low: float = 0.0, high: float = math.inf, low_open: bool = True,
                  high_open: bool = False, float32: bool = True) -> None:
    """A float flag, when set, must be finite and inside the range ((low, high] by default), and
    neither 0 nor infinite once cast to float32 (a 1e-300 rate would silently train nothing)."""
    value = flags.FLAGS[name].value
    if value is None:
        return
    if not math.isfinite(value):
        raise ConfigError(f"--{name} must be a finite number, got {value}")
    single = float(np.float32(value)) if abs(value) < 3.4e38 else math.inf
    if float32 and (not math.isfinite(single) or (value != 0 and single == 0)):
        raise ConfigError(f"--{name} {value} is {'infinite' if single else '0'} in float32, which the training uses")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        lo = f"{'>' if low_open else '>='} {low:g}"
        hi = "" if math.isinf(high) else f" and {'<' if high_open else '<='} {high:g}"
        raise ConfigError(f"--{name} must be {lo}{hi}, got {value}")


def int_list(name: str, minimum: int = 1) -> list:
    """A list flag of integers, each >= minimum (e.g. --bits 16,32)."""
    raw = flags.FLAGS[name].value or []
    try:
        values = [int(v) for v in raw]
    except ValueError:
        raise ConfigError(f"--{name} must be integers separated by commas, got {','.join(raw)}") from None
    bad = [v for v in values if v < minimum]
    if bad or not values:
        raise ConfigError(f"--{name} needs integers >= {minimum}, got {','.join(raw) or 'nothing'}")
    twice = sorted({v for v in values if values.count(v) > 1})
    if twice:  # each value names one model or result: a repeat would train or report it again
        raise ConfigError(f"--{name} lists {', '.join(map(str, twice))} more than once")
    return values


def no_arguments(argv) -> None:
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments {argv[1:]} (flags are written --name value)")


# --------------------------------------------------------------------------- process setup

def verbose() -> bool:
    """Library INFO/WARNING lines are shown only when asked: --verbosity 0 (or more) or CMR_VERBOSE=1."""
    if os.environ.get(VERBOSE_ENV, "") not in ("", "0"):
        return True
    return flags.FLAGS.is_parsed() and flags.FLAGS["verbosity"].present and flags.FLAGS.verbosity >= 0


def quiet() -> None:
    """Before TensorFlow loads: C++ INFO/WARNING lines and the CUDA probe's error line off, unless
    asked for (`verbose`) or the user set TF_CPP_MIN_LOG_LEVEL. After it loads: Python-side TF and
    absl INFO/WARNING off as well."""
    if not verbose():
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" in sys.modules:
        silence_python_logs()


def import_tensorflow() -> None:
    """Import TensorFlow and Keras with their load-time banners (oneDNN, CUDA probes: written
    through absl before TF_CPP_MIN_LOG_LEVEL applies) held back; they are shown if the import
    fails (not when Ctrl-C or SIGTERM stops it), and always when verbose."""
    if "tensorflow" in sys.modules or verbose():
        import keras  # noqa: F401
        import tensorflow  # noqa: F401

        silence_python_logs()
        return
    import tempfile

    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            import keras  # noqa: F401
            import tensorflow  # noqa: F401
        except Exception:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    silence_python_logs()


def silence_python_logs() -> None:
    if verbose():
        return
    import logging

    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


def is_chief() -> bool:
    """Whether this process writes the run's files: always, except a non-chief worker of a
    `--distribute multiworker` run (the TF_CONFIG rule of `distribute.Replicas.is_chief`, read
    without TensorFlow so the run folder can be locked before it loads)."""
    if flags.FLAGS.distribute != "multiworker":
        return True
    task, cluster = tf_config()
    kind, index = task.get("type"), task.get("index", 0)
    return kind == "chief" or (kind == "worker" and index == 0 and "chief" not in cluster)


def tf_config() -> tuple:
    """TF_CONFIG's (task, cluster), checked so that a mistake in it is one line rather than
    TensorFlow's traceback once the strategy is built."""
    import json

    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise ConfigError("--distribute multiworker reads the cluster from the TF_CONFIG environment variable "
                          "(see docs/design.md, 'Distribution'); it is not set")
    try:
        config = json.loads(raw)
    except ValueError as e:
        raise ConfigError(f"TF_CONFIG is not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ConfigError('TF_CONFIG must be a JSON object {"cluster": {...}, "task": {"type": ..., "index": ...}}')
    task, cluster = config.get("task", {}), config.get("cluster", {})

    def host_list(hosts):
        return isinstance(hosts, list) and hosts and all(isinstance(h, str) for h in hosts)

    if not (isinstance(cluster, dict) and cluster and all(host_list(hosts) for hosts in cluster.values())):
        raise ConfigError('TF_CONFIG "cluster" must map each job ("chief", "worker") to a list of "host:port" '
                          f"strings; got {cluster!r}")
    if not isinstance(task, dict) or task.get("type") not in cluster:
        raise ConfigError(f'TF_CONFIG "task" must name a job of the cluster ({", ".join(cluster)}) as "type"; '
                          f"got {task!r}")
    hosts, index = cluster[task["type"]], task.get("index", 0)
    if not (isinstance(index, int) and not isinstance(index, bool) and 0 <= index < len(hosts)):
        raise ConfigError(f'TF_CONFIG task index {index!r} is not one of the {len(hosts)} "{task["type"]}" '
                          f"machines (0..{len(hosts) - 1})")
    return task, cluster


def replicas():
    """The `--distribute` strategy as a `common.distribute.Replicas`."""
    from common import distribute

    replicas = distribute.Replicas(distribute.make_strategy(flags.FLAGS.distribute))
    if replicas.strategy is not None and replicas.is_chief:  # say what the strategy found
        devices = sorted({d.split("/")[-1].removeprefix("device:")
                          for d in replicas.strategy.extended.worker_devices})
        print(f"--distribute {flags.FLAGS.distribute}: {replicas.num} replica{'s' * (replicas.num != 1)} on "
              f"{', '.join(devices)}" + (" (no GPU found: the one-device result, slower than --distribute none)"
                                          if replicas.num == 1 else ""), flush=True)
    return replicas


def jit_compile(replicas) -> bool:
    """--jit_compile resolved: XLA by default on one device; not combined with a strategy (the
    replicas' collectives inside an XLA cluster are untested here). Under mixed_bfloat16 without a
    GPU the default is off: XLA's CPU backend runs bfloat16 matmuls at float32 speed (a 256x4096 by
    4096x4096 product: 86 ms in either precision under XLA, 43 ms in bfloat16 through TensorFlow's
    oneDNN kernels; docs/benchmarks.md)."""
    value = flags.FLAGS.jit_compile
    if value and replicas.strategy is not None:
        raise ConfigError("--jit_compile is not supported with --distribute (drop one of them)")
    if value is not None:
        return bool(value)
    if replicas.strategy is not None:
        return False
    if "precision" in flags.FLAGS and flags.FLAGS.precision == "mixed_bfloat16":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    return True


def steps_per_execution() -> int:
    """--steps_per_execution, 1 by default with --log_batches (so each line's time is its batch's)."""
    given = flags.FLAGS["steps_per_execution"].present
    return 1 if flags.FLAGS.log_batches and not given else flags.FLAGS.steps_per_execution


_PROGRAM: Optional[str] = None


def program() -> Optional[str]:
    """The running entry module ('acmr_tf.train'; the releases' names `jfse_tf.demo` and
    `zscrgan_tf.run_exp` are the same programs as `jfse_tf.train` / `zscrgan_tf.train`)."""
    return _PROGRAM


FROM_CHECKPOINT = "from the last checkpoint"  # what a training program's rerun resumes from


def counted(n: int, noun: str) -> str:
    """'1 epoch', '3 epochs'."""
    return f"{n} {noun}{'s' if n != 1 else ''}"


def _flagfiles(argv: list) -> list:
    """The paths given to --flagfile (as `--flagfile=P` or `--flagfile P`)."""
    return [a.split("=", 1)[1] if a.startswith("--flagfile=") else argv[i + 1] for i, a in enumerate(argv)
            if a.startswith("--flagfile=") or (a == "--flagfile" and i + 1 < len(argv))]


def _other_programs_flagfile(argv: list) -> str:
    """When a --flagfile holds another entry point's flags (its header says so): which, and how to run it."""
    for path in _flagfiles(argv):
        try:
            with open(path, encoding="utf-8") as f:
                first = f.readline()
        except (OSError, UnicodeDecodeError):
            continue
        words = first.split()
        if words[:4] in (["#", "flags", "of", "a"], ["#", "flags", "of", "an"]) and len(words) > 4 \
                and words[4] != _PROGRAM:
            return (f"--flagfile {path} holds the flags of {_a(words[4])} run, not of {_PROGRAM}; repeat it with "
                    f"`python -m {words[4]} --flagfile {path}`")
    return ""


_TEMP_DIR: list = []  # this process's private temporary folder (`private_tempdir`) and its liveness lock
TEMP_PREFIX, ALIVE_FILE = "cmr-", ".alive"


def private_tempdir() -> str:
    """A temporary folder of this process for everything that uses `tempfile` (TensorFlow's autograph
    writes a source file per converted function). Removed at exit, also on the error exits that skip
    Python's exit handlers (`_fail`), where those files used to stay behind in /tmp. A process killed
    outright (SIGKILL, the kernel's OOM killer) cannot remove it: its `.alive` lock, held for the
    process's life and released by the kernel, tells the next run that the folder is stale."""
    if not _TEMP_DIR:
        remove_stale_tempdirs()
        path = tempfile.mkdtemp(prefix=TEMP_PREFIX)
        alive = open(os.path.join(path, ALIVE_FILE), "w")
        fcntl.flock(alive, fcntl.LOCK_EX)  # before the PID is written: an empty file is never stale
        alive.write(f"{os.getpid()}\n")
        alive.flush()
        _TEMP_DIR.extend([path, alive])
        tempfile.tempdir = path
        atexit.register(remove_private_tempdir)
    return _TEMP_DIR[0]


def remove_stale_tempdirs(root: Optional[str] = None) -> list:
    """Remove this user's private folders (under `root`, default $TMPDIR) whose process is gone:
    their `.alive` lock can be taken and holds a PID. A live run's folder, one being created and
    folders without the lock file are left alone. Returns the removed paths."""
    root = root or tempfile.gettempdir()
    removed = []
    try:
        names = [n for n in os.listdir(root) if n.startswith(TEMP_PREFIX)]
    except OSError:
        return removed
    for name in names:
        path = os.path.join(root, name)
        marker = os.path.join(path, ALIVE_FILE)
        try:
            if (not os.path.isdir(path) or os.path.islink(path) or os.stat(path).st_uid != os.getuid()
                    or not os.path.isfile(marker)):
                continue
        except OSError:
            continue
        held, pid = io.probe_lock(marker) or (True, "")
        if not held and pid:  # an empty file: its process is between creating and locking it
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def remove_private_tempdir() -> None:
    if _TEMP_DIR:
        shutil.rmtree(_TEMP_DIR[0], ignore_errors=True)


def _exit_now(code: int) -> None:
    """Exit without Python's teardown (TensorFlow's chatter), the private temporary folder removed."""
    remove_private_tempdir()
    os._exit(code)


def run_main(main: Callable, resumes: str = "") -> None:
    """`absl.app.run(main)` with one-line errors and no traceback for what a user can fix:
    unknown or invalid flags, data and configuration errors and unreadable/unwritable paths exit
    with code 2; a diverged training (NaN/inf loss) exits with code 3; Ctrl-C exits with 130, SIGTERM with 143
    (saying "re-run the same command to resume <resumes>" for a program that resumes)."""
    global _PROGRAM
    _PROGRAM = main.__module__
    if _PROGRAM == "__main__":  # `python -m package.module`
        _PROGRAM = getattr(getattr(sys.modules["__main__"], "__spec__", None), "name", None) or _PROGRAM
    quiet()
    private_tempdir()  # before TensorFlow loads
    for flag in {flags.FLAGS[name] for name in flag_values()}:  # --help lists them, under python -m or cmr
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)

    hint = f"; re-run the same command to resume {resumes}" if resumes else ""

    def parse(argv):
        end = argv.index("--") if "--" in argv else len(argv)
        argv = [("--help" if a == "-h" else a) for a in argv[:end]] + argv[end:]  # the usual short form
        for path in _flagfiles(argv[:end]):
            if path.endswith(".json"):  # absl would read each JSON line as an argument
                print(f"error: --flagfile {path}: a flag file holds --name=value lines; a run's is flags.txt "
                      "(flags.json is its machine-readable record)", file=sys.stderr)
                sys.exit(2)
        try:
            rest = flags.FLAGS(argv)
            expand_home()
            return rest
        except flags.Error as e:  # absl words some of these "ERROR:: ..."
            absl_says = str(e).removeprefix("ERROR::").strip() + " (see --helpfull)"
            print(f"error: {_other_programs_flagfile(argv[:end]) or absl_says}", file=sys.stderr)
            sys.exit(2)
        except SystemExit as e:  # absl ends --help, --helpfull, --helpshort with status 1; asked-for help is 0
            asked = any(a.split("=")[0] in HELP_FLAGS for a in argv[1:end])
            sys.exit(0 if asked and e.code == 1 else e.code)
        except BrokenPipeError:  # `--help | head`
            _pipe_closed()

    def wrapped(argv):
        quiet()  # --verbosity is known now; TensorFlow is not loaded yet
        if threading.current_thread() is threading.main_thread():  # signal.signal works only there
            signal.signal(signal.SIGTERM, _terminate)
            _watch_stops(hint, training=resumes == FROM_CHECKPOINT)
        try:
            return main(argv)
        except (DataError, ConfigError) as e:
            _fail(f"error: {e}", 2)
        except DivergenceError as e:  # not bad input: the run itself went wrong
            _fail(f"error: training diverged: {e}", 3)
        except KeyboardInterrupt as e:
            terminated = isinstance(e, Terminated)
            said = ("; nothing had been checkpointed yet and the new run's files were removed: re-run the same "
                    "command to start it again") if _ROLLED_BACK and hint else hint
            _fail(f"error: {'terminated (SIGTERM)' if terminated else 'interrupted'}{said}",
                  128 + signal.SIGTERM if terminated else 130)
        except BrokenPipeError:  # `cmr report runs/ | head`: stop as Unix tools do, without a message
            _pipe_closed()
        except OSError as e:  # e.g. an output folder that cannot be created or written, a full disk
            reason = e.strerror or str(e)
            _fail(f"error: {e.filename}: {reason}" if e.filename else f"error: {reason}", 2)
        except MemoryError:
            _fail(f"error: {OUT_OF_MEMORY}", 2)
        except Exception as e:
            if hasattr(e, "error_code") and op_error_reason(e) in OS_FAULTS:  # TensorFlow's own file writes
                _fail(f"error: {op_error_line(e)}", 2)  # (summaries, datasets) on a full or read-only disk
            oom = tensorflow_oom(e)
            if oom:
                _fail(f"error: {OUT_OF_MEMORY} ({oom})", 2)
            raise

    app.run(wrapped, flags_parser=parse)


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, a batch scheduler's stop or pre-emption) stops a run as Ctrl-C does: a new
    run without a checkpoint is rolled back, temporary files are removed, and the user is told how
    to resume, instead of the process vanishing with Python's default action."""


def _terminate(signum, frame) -> None:
    raise Terminated()


_STOP: list = []  # the stop signals received (SIGINT / SIGTERM numbers), in order (the watcher thread's)
_DEFERRED: list = []  # those received inside the training loop (`stops_at_unit_ends`)
_ROLLED_BACK: list = []  # a new run stopped before its first checkpoint left its folder as it was
_IN_LOOP: list = []  # non-empty inside `stops_at_unit_ends`


def stop_requested() -> Optional[int]:
    """The first Ctrl-C / SIGTERM received, if any: the run driver stops at the next epoch or cycle
    even if TensorFlow swallowed the KeyboardInterrupt of a signal that came during its call."""
    return _STOP[0] if _STOP else (_DEFERRED[0] if _DEFERRED else None)


@contextlib.contextmanager
def stops_at_unit_ends(between_batches: bool = False):
    """Inside the training loop a first Ctrl-C / SIGTERM is recorded instead of raised, so the epoch
    (cycle) under way ends and is checkpointed, and the driver then stops (`stop_requested`); a second
    one raises at once. Outside the loop (loading data, writing results) they act as usual.
    `between_batches`: the driver stops after the batches under way instead (`Task.part_way`)."""
    if threading.current_thread() is not threading.main_thread():  # signal.signal works only there
        yield
        return

    def defer(signum, frame):
        if _DEFERRED:
            raise_stop(signum)
        _DEFERRED.append(signum)

    saved = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) not in (signal.SIG_IGN, None):  # a background job's ignored SIGINT stays so
            saved[sig] = signal.signal(sig, defer)
    _IN_LOOP.append("after the batches under way, which are checkpointed part-way through the epoch" if between_batches
                    else "at the end of the epoch or cycle under way, which is checkpointed")
    try:
        yield
    finally:
        _IN_LOOP.clear()
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def raise_stop(signum: int) -> None:
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _watch_stops(hint: str, training: bool) -> None:
    """Python runs a signal's handler only once the running TensorFlow call returns: a whole
    compiled epoch by default, minutes at release widths. A thread woken by the signal (Python's
    wakeup fd) says so at once, and a second Ctrl-C or SIGTERM stops the process at once (as a kill
    would: the run resumes from its last checkpoint)."""
    import time

    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)

    def watch():
        while True:
            for signum in os.read(read_fd, 64):
                if signum not in (signal.SIGINT, signal.SIGTERM):
                    continue
                _STOP.append(signum)
                if len(_STOP) > 1:
                    print(f"error: stopped at once{hint}", file=sys.stderr, flush=True)
                    _exit_now(128 + signum)
                time.sleep(1.0)  # a stop the main thread handles right away has ended the process by now
                if _IN_LOOP:
                    print(f"stopping {_IN_LOOP[0]}; Ctrl-C again stops at once", file=sys.stderr, flush=True)
                    continue
                longest = " (up to one compiled epoch)" if training else ""
                print(f"stopping when the running TensorFlow call returns{longest}; Ctrl-C again stops at once",
                      file=sys.stderr, flush=True)

    threading.Thread(target=watch, name="stop-signals", daemon=True).start()


OUT_OF_MEMORY = "out of memory; lower --batch_size or the network widths"


HELP_FLAGS = ("--help", "--helpfull", "--helpshort", "--helpxml", "-?")


def _pipe_closed() -> None:
    """The reader of stdout went away: exit with SIGPIPE's status and no traceback from the final flush."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    _exit_now(128 + signal.SIGPIPE)


def _fail(message: str, code: int) -> None:
    """One line on stderr, then exit without TensorFlow's teardown chatter."""
    print(message, file=sys.stderr, flush=True)
    sys.stdout.flush()
    _exit_now(code)
