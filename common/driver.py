"""The run driver: every method's training runs through `RunFolder` and `fit`.

Modelled on tensorflow/models `official/core` (a task builds its networks, steps and evaluation;
one runner owns checkpoints, summaries and the schedule), kept small. A method supplies a `Task`;
this module owns, once for all methods:

- run identity: `run.json` holds the fingerprint of every result-affecting flag and of the data;
  the same command resumes, a different one is refused (exit 2) before anything is written,
  `--overwrite` starts the folder over and `--extend` continues it to a longer schedule;
- one writer per folder (an exclusive `flock` on `<output_dir>/.lock`, released by the kernel
  when a process dies);
- damaged state (checkpoint index, checkpoint, history, fingerprint) as an error, never a restart;
- the divergence guard, progress lines, the TensorBoard layout, and provenance in results.json.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from typing import Callable, Dict, Optional, Sequence

import numpy as np

import common
from common import io
from common.errors import ConfigError, DataError, DivergenceError

RUN_FILE = "run.json"
LOCK_FILE = ".lock"
# what a run writes into its folder (and into each part folder); --overwrite removes only these
EXTRA_FILES = "extra_files.json"  # files a run wrote outside its folder (ZSCRGAN's result pickles)
RUN_ARTIFACTS = ("run.json", "results.json", "flags.json", "flags.txt", "history.json", "encoders.json", "splits.npz",
                 "args.txt", "untrained.json", "checkpoints", "tb", EXTRA_FILES)


# --------------------------------------------------------------------------- the run folder

def _write_flagfile(folder: str) -> None:
    """`<folder>/flags.txt`: `--flagfile <folder>/flags.txt` repeats this command (an entry point only)."""
    from absl import flags as absl_flags

    from common import run

    if absl_flags.FLAGS.is_parsed():
        with io.atomic_open(os.path.join(folder, "flags.txt")) as f:
            f.write(run.flagfile_text())


class RunFolder:
    """One `--output_dir`: its lock, identity, parts (sub-runs) and results.

    Use as a context manager. On entry the folder is checked against `settings` and `data`
    (read-only: a refused run leaves every file byte-identical), then locked and accepted; only
    then may the caller write encoders, splits or flags. `parts` are sub-folders each holding one
    model's checkpoints, history and TensorBoard logs ("" = the folder itself).
    """

    def __init__(self, path: str, settings: dict, data: dict, parts: Sequence[str] = ("",),
                 overwrite: bool = False, chief: bool = True, extra_paths: Sequence[str] = (),
                 length: Optional[int] = None, length_flags: Sequence[str] = ("epochs",), unit: str = "epoch",
                 extend: bool = False, fixed_length: Optional[str] = None):
        """`length`: the epochs (or cycles: `unit`) this command plans, set by `length_flags`; with
        `extend`, a run started with a shorter schedule and otherwise the same settings is continued to
        `length`, unless `fixed_length` says why the method's training depends on its length."""
        self.path, self.settings, self.data = path, settings, data
        self.parts, self.overwrite, self.chief = tuple(parts), overwrite, chief
        self.length, self.length_flags, self.unit, self.extend = length, tuple(length_flags), unit, extend
        self.fixed_length = fixed_length
        self.extensions: list = []  # [{"from", "to", "at"}]: the schedule lengthenings of this run
        self._extension_now: Optional[dict] = None
        self._old: dict = {}  # the run.json read by `check` (under the lock, the second time)
        self.extra_paths = tuple(extra_paths)  # e.g. ZSCRGAN's results pickles folder
        from common import run

        self.program = run.program()  # None outside an entry point (tests, notebooks): not compared
        self.started = time.time()
        self._lock = None
        self.resumed = False
        self._before: Optional[set] = None  # the folder's entries when a new run was accepted
        self.first_run: Optional[dict] = None  # a resumed run: when and with which code it started
        self._created_dir = self._had_lock = False

    # ------------------------------------------------------------------ identity
    def _record(self) -> dict:
        return {"program": self.program, "settings": self.settings, "data": self.data, "parts": list(self.parts),
                "extra_paths": list(self.extra_paths), "length": self.length}

    def _existing_artifacts(self) -> list:
        if not os.path.isdir(self.path):
            return []
        names = set(os.listdir(self.path))
        found = [n for n in RUN_ARTIFACTS if n in names]
        found += [p for p in self.parts if p and p in names]
        return found

    def check(self) -> None:
        """Refuse (ConfigError / DataError) a folder that holds another run; touches nothing."""
        if not self.path:
            raise ConfigError("--output_dir is required: the run folder for checkpoints, logs and results (e.g. "
                              "--output_dir runs/my_run)")
        if self.extend and self.overwrite:
            raise ConfigError("--extend continues the run in --output_dir and --overwrite starts it over: pass one")
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise ConfigError(f"--output_dir {self.path} is a file, not a folder")
        for name in INPUT_DIR_FLAGS:
            given = self.settings.get(name)
            if isinstance(given, str) and given and os.path.realpath(given) == os.path.realpath(self.path):
                raise ConfigError(f"--output_dir {self.path} is the input folder --{name}: a run writes "
                                  "checkpoints, logs and results into its folder; choose another --output_dir")
        parent = os.path.dirname(os.path.abspath(self.path))
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            raise ConfigError(f"--output_dir {self.path}: {parent} is a file, not a folder")
        run_file = os.path.join(self.path, RUN_FILE)
        if not os.path.exists(run_file):
            if self.extend:
                raise ConfigError(f"--extend: {self.path} holds no run to continue; leave --extend out to start one")
            found = self._existing_artifacts()
            if found and not self.overwrite:
                raise ConfigError(
                    f"{self.path} holds run outputs ({', '.join(sorted(found))}) but no {RUN_FILE} (written by an "
                    "older version, or not this command's folder); pass --overwrite to replace them, or choose "
                    "another --output_dir")
            return
        try:
            old = io.read_json(run_file)
            old_settings, old_data = old["settings"], old["data"]
        except (DataError, KeyError, TypeError) as e:
            if self.overwrite:
                return
            raise DataError(f"{run_file}: damaged ({io.damage(run_file, e)}); pass --overwrite to start this folder "
                            "over, or choose another --output_dir") from None
        other = old.get("program") if isinstance(old, dict) else None
        if other and self.program and other != self.program and not self.overwrite:
            raise ConfigError(f"{self.path} holds a run of {other}, not of {self.program}; choose another "
                              "--output_dir, or pass --overwrite to replace that run")
        old_settings = absolute_paths(old_settings)
        changes = (describe_changes(old_settings, self.settings, "--")
                   + describe_changes(old_data, self.data, "data "))
        extension, why_not = self._extension(old, old_settings, old_data) if changes else (None, "")
        if changes and not self.overwrite and not (self.extend and extension):
            hint = ""
            if extension:
                hint = f" To continue it to {self.length} {self.unit}s, pass --extend."
            elif self.extend:
                hint = f" (--extend {why_not}.)"
            raise ConfigError(f"{self.path} holds a run with other settings: {'; '.join(changes)}.{hint} Re-run "
                              "with the same flags to resume it, pass --overwrite to start it over, or choose another "
                              "--output_dir")
        self.resumed = not changes or bool(self.extend and extension)
        self.first_run = {"created": old.get("created"), "code": old.get("code")} if self.resumed else None
        self.extensions = list(old.get("extensions") or []) if self.resumed else []
        self._extension_now = extension if self.resumed and extension else None
        self._old = old

    def _extension(self, old: dict, old_settings: dict, old_data: dict) -> tuple:
        """({"from", "to"}, "") when this command differs from the run only by a longer schedule that
        the method can extend; else (None, why not)."""
        before = old.get("length")
        if self.length is None:
            return None, "lengthens a training run; this command has no schedule to lengthen"
        if self.fixed_length:
            return None, f"cannot lengthen this run: {self.fixed_length}"
        if describe_changes({k: v for k, v in old_settings.items() if k not in self.length_flags},
                            {k: v for k, v in self.settings.items() if k not in self.length_flags}, "") \
                or describe_changes(old_data, self.data, ""):
            flags_text = " / ".join(f"--{n}" for n in self.length_flags)
            return None, f"continues a run with only a longer schedule ({flags_text}); every other setting must match"
        if not isinstance(before, int):
            return None, f"cannot lengthen this run: {RUN_FILE} does not record the run's length (an older version)"
        if self.length <= before:
            return None, (f"needs a longer schedule than the run's {before} {self.unit}s; this command plans "
                          f"{self.length}")
        return {"from": before, "to": self.length}, ""

    def __enter__(self) -> "RunFolder":
        self.check()  # before the lock: a refused run creates nothing
        if not self.chief:
            return self
        self._created_dir = not os.path.exists(self.path)
        os.makedirs(self.path, exist_ok=True)
        lock_path = os.path.join(self.path, LOCK_FILE)
        self._had_lock = os.path.exists(lock_path)
        self._lock = open(lock_path, "a+")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            self._lock.seek(0)
            holder = self._lock.read().strip() or "unknown"
            self._lock.close()
            self._lock = None
            raise ConfigError(f"{self.path} is being written by another run (PID {holder}); wait for it to finish "
                              "or choose another --output_dir") from None
        try:
            self.check()  # again under the lock: the folder may have changed while we waited
            if self.overwrite:
                self._clear()
                self.resumed, self.first_run = False, None
            self._before = None if self.resumed else self._entries()
            self._lock.seek(0)
            self._lock.truncate()
            self._lock.write(f"{os.getpid()}\n")
            self._lock.flush()
            if not self.resumed:
                io.write_json(os.path.join(self.path, RUN_FILE),
                              dict(self._record(), created=_now(), version=common.__version__, code=code_state()))
            elif self._extension_now is not None:  # the run goes on under this command's settings
                self.extensions.append(dict(self._extension_now, at=_now()))
                io.write_json(os.path.join(self.path, RUN_FILE), dict(self._old, settings=self.settings,
                                                                       length=self.length, extensions=self.extensions))
                print(f"extending the run in {self.path} from {self._extension_now['from']} to {self.length} "
                      f"{self.unit}s", flush=True)
            _write_flagfile(self.path)  # now, so that a stopped run can be resumed with --flagfile
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, exc_type=None, exc=None, tb=None) -> None:
        if exc_type is not None and self._lock is not None:
            self._roll_back()
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def _entries(self) -> set:
        """The names in the folder and in its part folders (what was there before this run)."""
        names = set()
        for part in ("",) + self.parts:
            folder = self.part_path(part)
            if os.path.isdir(folder):
                names.update(os.path.join(part, n) for n in os.listdir(folder))
        return names

    def _roll_back(self) -> None:
        """A new run stopped before its first checkpoint (bad input found once the task is built,
        out of memory, Ctrl-C): remove what this run created, so that the corrected command starts
        afresh instead of being refused as 'other settings'; there is nothing to resume. A run with
        a checkpoint, a resumed run and every file that was there before are kept."""
        kept = (os.path.join("checkpoints", "checkpoint"),  # the checkpoint index, or a part-way checkpoint's record
                os.path.join("checkpoints", "partial", "partial.json"))  # (training.PARTIAL; no TensorFlow import)
        if self._before is None or any(os.path.exists(os.path.join(self.part_path(p), k)) for p in self.parts
                                       for k in kept):
            return
        self._remove_extra_files()  # a new run: every file it noted is its own
        for name in sorted(self._entries() - self._before - {LOCK_FILE}, key=len, reverse=True):
            target = os.path.join(self.path, name)
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target, ignore_errors=True)
            elif os.path.lexists(target):
                os.unlink(target)
        if not self._had_lock:
            os.unlink(os.path.join(self.path, LOCK_FILE))
        if self._created_dir and not os.listdir(self.path):
            os.rmdir(self.path)
        from common import run

        run._ROLLED_BACK.append(self.path)

    def _remove_extra_files(self) -> None:
        try:
            noted = extra_files(self.path)
        except DataError:  # unreadable: leave those files alone rather than guess
            return
        for path in noted:
            if os.path.isfile(path):
                os.unlink(path)

    def _clear(self) -> None:
        """--overwrite: remove this project's outputs (of the old run's parts too), nothing else."""
        run_file = os.path.join(self.path, RUN_FILE)
        old_parts = []
        with contextlib.suppress(DataError, KeyError, TypeError):
            old_parts = list(io.read_json(run_file).get("parts", []))
        self._remove_extra_files()  # the old run's files elsewhere, by name: never another run's
        for part in set(old_parts) | set(self.parts) | {""}:  # the folder itself holds run.json
            folder = self.part_path(part)
            for name in RUN_ARTIFACTS:
                target = os.path.join(folder, name)
                if os.path.isdir(target):
                    shutil.rmtree(target)
                elif os.path.exists(target):
                    os.unlink(target)
            if part and os.path.isdir(folder) and not os.listdir(folder):
                os.rmdir(folder)

    # ------------------------------------------------------------------ outputs
    def part_path(self, part: str) -> str:
        return os.path.join(self.path, part) if part else self.path

    def write_results(self, folder: str, *, dataset: str, method: str, seed: int, flags: dict, metrics: dict,
                      required: Sequence[str] = ("i2t_map_all", "t2i_map_all"), warnings: Sequence[str] = (),
                      **extra) -> dict:
        """results.json (the run contract) with provenance; flags.json beside it."""
        missing = [k for k in required if k not in metrics]
        if missing:
            raise ConfigError(f"results for {method} lack the contract's metrics {missing}")
        warnings, origin = list(warnings), provenance(self.started, self.data)
        if self.first_run is not None:  # wall_seconds etc. are this process's; say where the run began
            origin["resumed"] = True
            origin["run_created"] = self.first_run["created"]
            if self.extensions:
                origin["extensions"] = self.extensions
            before = self.first_run.get("code")
            if before and before != code_state():
                warnings.append(f"this run was started with code {_show_code(before)} and resumed with "
                                f"{_show_code(code_state())}: its model may mix two versions of the method")
        results = {"dataset": dataset, "method": method, "seed": seed, "flags": flags, "metrics": metrics,
                   "provenance": origin, "warnings": warnings, **extra}
        results.update(metrics)
        if self.chief:
            io.write_json(os.path.join(folder, "flags.json"), flags)
            _write_flagfile(folder)
            io.write_json(os.path.join(folder, "results.json"), results)
        return results

    def finish(self, folder: str, *, trained: bool, final_step: Optional[int], **results) -> bool:
        """The end of a model's run: results.json (`write_results`) and the final/<metric> scalars
        at `final_step` (None: none). A complete run re-run (`trained` False) keeps the results.json
        it wrote then, byte for byte; returns whether it wrote."""
        if not trained and os.path.exists(os.path.join(folder, "results.json")):
            print(f"the run in {folder} was already complete; results.json is unchanged", flush=True)
            return False
        written = self.write_results(folder, **results)
        if final_step is not None:
            self.write_final(folder, written["metrics"], final_step)
        return True

    def write_final(self, folder: str, metrics: dict, step: int) -> None:
        """The headline numbers as final/<metric> scalars (the HParams view's metric columns)."""
        if not self.chief:
            return
        writer = Summaries(os.path.join(folder, "tb"))
        writer.scalars({f"final/{k}": v for k, v in flatten(metrics).items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)}, step)
        writer.flush()


def writer(folder: str) -> Optional[str]:
    """The PID (as written in its lock file) of the run writing `folder` or the run folder above it
    (a JFSE scenario, a cmhash code length), or None when no run holds either. Probed with a shared
    lock held for an instant, so readers (export, report) can say that a run is still training."""
    for path in (folder, os.path.dirname(os.path.abspath(folder))):
        state = io.probe_lock(os.path.join(path, LOCK_FILE), shared=True)
        if state and state[0]:
            return state[1] or "unknown"
    return None


def note_extra_file(run_dir: str, path: str) -> None:
    """Record a file this run wrote outside its folder, so that --overwrite (or the roll-back of a
    run stopped before its first checkpoint) removes exactly the run's own files there."""
    noted = extra_files(run_dir)
    path = os.path.abspath(path)
    if path not in noted:
        io.write_json(os.path.join(run_dir, EXTRA_FILES), {"files": noted + [path]})


def extra_files(run_dir: str) -> list:
    path = os.path.join(run_dir, EXTRA_FILES)
    if not os.path.exists(path):
        return []
    try:
        return [str(p) for p in io.read_json(path)["files"]]
    except (DataError, KeyError, TypeError) as e:
        raise DataError(f"{path}: damaged ({io.damage(path, e)}); it lists the files this run wrote outside its "
                        "folder") from None


# Flags naming files or folders: a run's fingerprint and flags.txt hold them as absolute paths, so that
# the same folder given relatively or absolutely is the same run, and `--flagfile` works from any folder.
PATH_FLAGS = frozenset({"data_dir", "output_dir", "res_dir", "image_dir", "text_dir", "image_preset",
                        "text_preset", "vocab"})


INPUT_DIR_FLAGS = ("data_dir", "image_dir", "text_dir")  # folders a run reads: never its --output_dir


def absolute_paths(settings: dict) -> dict:
    """`settings` with every path flag made absolute (a relative one is taken from the current folder,
    as the run that recorded it was, when it was recorded relative by an older version)."""
    return {k: (os.path.abspath(v) if k in PATH_FLAGS and isinstance(v, str) and v else v)
            for k, v in settings.items()}


def describe_changes(old: dict, new: dict, prefix: str) -> list:
    """'name old -> new' for every differing key (flags are listed as --name)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<unset>"), new.get(key, "<unset>")
        if _canonical(a) != _canonical(b):
            out.append(f"{prefix}{key} {_show(a)} -> {_show(b)}")
    return out


def _canonical(value):
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _show(value) -> str:
    if value is None:
        return "(default)"  # a flag left unset: the preset's or dataset's default applies
    if isinstance(value, list) and value and all(isinstance(v, (str, int, float)) for v in value):
        value = ",".join(str(v) for v in value)  # a list flag as it is typed: --bits 16,32
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


_GIT: Optional[dict] = None


def git_state() -> dict:
    """The checkout's commit (and whether it has uncommitted changes), when run from a git checkout."""
    global _GIT
    if _GIT is None:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        _GIT = {}
        if os.path.exists(os.path.join(root, ".git")):
            try:
                run = lambda *a: subprocess.run(["git", "-C", root, *a], capture_output=True, text=True,  # noqa: E731
                                                timeout=10).stdout.strip()
                _GIT = {"commit": run("rev-parse", "HEAD"),
                        "dirty": bool(run("status", "--porcelain", "--untracked-files=no"))}
            except (OSError, subprocess.SubprocessError):
                _GIT = {}
    return _GIT


def code_state() -> dict:
    """The code a run is trained with: the project version and, from a checkout, its commit."""
    git = git_state()
    return {"version": common.__version__, "git_commit": git.get("commit"), "git_dirty": git.get("dirty")}


def _show_code(code: dict) -> str:
    commit = (code.get("git_commit") or "")[:8] + ("+changes" if code.get("git_dirty") else "")
    return f"{code.get('version')}" + (f" ({commit})" if commit else "")


def command_line() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if sys.argv[0].startswith("cmr "):  # the console script names its command in argv[0] (common.cli)
        head = sys.argv[0].split()
    elif spec is not None and spec.name:
        head = ["python", "-m", spec.name]
    else:
        head = ["python", sys.argv[0]]
    return " ".join(head + [shlex.quote(a) for a in sys.argv[1:]])


def provenance(started: float, data: dict) -> dict:
    """What produced a result: code, libraries, devices, command, time and data."""
    import keras
    import tensorflow as tf

    end = time.time()
    return {"version": common.__version__, **{f"git_{k}": v for k, v in git_state().items()},
            "python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__, "devices": [d.name for d in tf.config.list_logical_devices()],
            "platform": platform.platform(), "command": command_line(),
            "started": datetime.datetime.fromtimestamp(started).astimezone().isoformat(timespec="seconds"),
            "ended": datetime.datetime.fromtimestamp(end).astimezone().isoformat(timespec="seconds"),
            "wall_seconds": round(end - started, 3), "data": data}


# --------------------------------------------------------------------------- the task interface

@dataclasses.dataclass
class Evaluation:
    """One evaluation: `record` goes into history.json; `scalars` (flat name -> value, e.g.
    "test/i2t_map_all") into TensorBoard and the progress line; `curves` are PR curves as
    (query embeddings, gallery embeddings, query labels, gallery labels, distance)."""

    record: dict
    scalars: Dict[str, float]
    curves: dict = dataclasses.field(default_factory=dict)


class Task:
    """What a method supplies to `fit`. Subclasses set `num_units` and implement the methods."""

    unit = "epoch"        # "cycle" for ZSCRGAN
    num_units = 0
    replicas = None
    headline: Sequence[str] = ()  # progress-line metrics (keys of Evaluation.scalars)
    key_losses: Sequence[str] = ()  # progress-line losses (all when empty)
    selection: Optional[str] = None  # results report the best evaluation by `selection_score`, not the last
    steps_per_unit: Optional[int] = None  # batches per unit, when known (progress within a long unit)
    part_way = False  # train_unit calls on_block after every batch and takes `start` / `earlier` (BatchRunner),
    #                   and the data position is checkpointed: a unit can be stopped and checkpointed part-way

    def checkpoint_objects(self) -> dict:
        raise NotImplementedError

    def train_unit(self, unit: int, on_block: Optional[Callable] = None, **resume) -> Dict[str, np.ndarray]:
        """Train one epoch or cycle; per-batch values of the logged outputs (arrays) or unit means.
        With `part_way`, `resume` (start=, earlier=) continues a unit checkpointed part-way."""
        raise NotImplementedError

    def unit_losses(self, values: Dict[str, np.ndarray]) -> Dict[str, float]:
        """The unit's scalar losses (default: the last batch's, as the releases logged)."""
        return {k: float(np.asarray(v).reshape(-1)[-1]) for k, v in values.items()}

    def evaluate_at(self, unit: int) -> bool:
        return True

    def evaluate(self, unit: int) -> Evaluation:
        raise NotImplementedError

    def models(self) -> dict:
        """Networks whose weights go into the histograms."""
        return {}

    def selected_models(self) -> dict:
        """Networks the selected model keeps: those its export restores."""
        return self.models()

    def selection_score(self, record: dict) -> float:
        """With `selection`: how good an evaluation record is (the first highest is the result)."""
        raise NotImplementedError

    def record_name(self, record: dict) -> str:
        """How results.json names an evaluation (said by the export of a selected model)."""
        from common import training

        return training.epoch_name(record["epoch"])

    def on_start(self, resumed: bool) -> None:
        """After restore (or initialisation), before the first unit."""

    def before_record(self, evaluation: Evaluation, history: list) -> None:
        """Before the evaluation is recorded and checkpointed: Python-side state into checkpointed
        variables (a sampler), side outputs that must exist once the record does (result pickles)."""

    def after_record(self, evaluation: Evaluation, history: list) -> None:
        """After the record is checkpointed (e.g. printing it)."""

    def pending(self) -> dict:
        """Python-side counts since the last record (JSON values), saved with a checkpoint taken
        between evaluations (`FitOptions.checkpoint_seconds`) and given back by `restore_pending`."""
        return {}

    def restore_pending(self, pending: dict) -> None:
        """On a resume from a checkpoint taken between evaluations: what `pending` returned then."""


# --------------------------------------------------------------------------- the loop

PROGRESS_SECONDS = 60.0  # long work (a unit, an end-to-end evaluation) prints a line this often


@dataclasses.dataclass
class FitOptions:
    label: str = ""                   # prefix of printed lines ("[zs]")
    histogram_every: int = 10         # weight histograms every N units (and at the last); 0: never
    log_batches: bool = False         # the release's per-batch loss lines
    log_every: int = 1
    batch_times: bool = True          # print each batch line's end time (exact with one batch per call)
    hparams: Optional[dict] = None    # config for TensorBoard's HParams view
    profile_unit: Optional[int] = None  # a TensorFlow profiler trace of this (0-based) unit into tb/
    checkpoint_seconds: float = 600.0  # also checkpoint between evaluations when this long since the last (0: no)
    #                                   (and part-way through a unit, for a task that can: `Task.part_way`)
    inner_progress_seconds: float = PROGRESS_SECONDS  # a progress line within a unit running this long since the last


@dataclasses.dataclass
class FitResult:
    history: list           # every evaluation record, restored ones included
    trained: int            # epochs / cycles trained by this process (0: the run was already complete)

    @property
    def seconds_per_unit(self) -> Optional[float]:
        """Training seconds per epoch or cycle over the whole run (resumed parts included)."""
        units = sum(r.get("train_units", 0) for r in self.history)
        seconds = sum(r.get("train_seconds", 0.0) for r in self.history)
        return seconds / units if units else None


def fit(task: Task, folder: str, options: FitOptions = FitOptions(),
        on_record: Optional[Callable[[list], None]] = None) -> FitResult:
    """Train `task` in `folder` (a run part) to `task.num_units`, resuming from its last checkpoint.

    `on_record(history)` runs after each checkpointed evaluation (e.g. to keep results current).
    Each record carries the training time and units since the previous one (`train_seconds`,
    `train_units`), so seconds per epoch stay right across resumes.
    """
    from common import run, training

    state = training.RunState(folder, replicas=task.replicas, **task.checkpoint_objects())
    label = f"{options.label} " if options.label else ""
    partial = state.partial
    if partial is not None:
        print(f"{label}resumed in {task.unit} {state.start_epoch + 1} of {task.num_units}, after batch "
              f"{partial['batches']} of {task.steps_per_unit} ({folder})", flush=True)
    elif state.resumed:
        print(f"{label}resumed after {state.start_epoch} of {task.num_units} {task.unit}s ({folder})", flush=True)
    task.on_start(state.resumed)
    trial = os.path.abspath(folder)
    current = _CurrentHParams(options.hparams, trial) if options.hparams is not None else None
    if state.resumed and state.chief:  # the stopped session's later units; HParams of a shorter schedule
        training.drop_events_from(os.path.join(folder, "tb"),
                                  state.start_epoch if state.start_epoch < task.num_units else None, also=current)
    writer = Summaries(os.path.join(folder, "tb"), task.replicas)
    if current is not None and not (state.resumed and current.seen):
        writer.hparams(options.hparams, trial=trial)
    first, total = state.start_epoch, task.num_units
    profile = options.profile_unit
    if profile is not None and profile >= total:
        raise ConfigError(f"--profile_epoch {profile + 1} is beyond this run's {total} {task.unit}s")
    if profile is not None and profile < first:
        print(f"{label}note: {task.unit} {profile + 1} was trained before this resume; no profiler trace", flush=True)
    progress = Progress(total, first, task.unit, label)
    pending = state.pending  # a checkpoint taken between evaluations: the interval so far
    since, units_since = float(pending.get("train_seconds", 0.0)), int(pending.get("train_units", 0))
    task.restore_pending(pending.get("task", {}))
    last_save = time.time()
    alone = not (task.replicas is not None and task.replicas.multi_worker)  # may checkpoint on its own timer
    part_way = task.part_way and alone and state.chief
    selected, best = None, -np.inf
    if task.selection:
        throwaway = None if state.chief else os.path.join(state.ckpt.write_directory, training.SELECTED)
        selected = training.SelectedModel(folder, task.selected_models(), task.selection, chief=state.chief,
                                          write_directory=throwaway)
        best = max((task.selection_score(r) for r in state.history), default=-np.inf)
        if partial is None:  # a part-way checkpoint comes after its unit's first batch: the choice was named
            _keep_restored_best(task, state, selected, best)
    with run.stops_at_unit_ends(part_way):  # a stop lets the epoch (batch) under way end and keeps it
        for unit in range(first, total):
            if (signum := run.stop_requested()) is not None:  # a Ctrl-C / SIGTERM TensorFlow's call swallowed
                run.raise_stop(signum)
            on_block = _block_printer(task, unit, options, label, time.time()) if options.log_batches else None
            tracing = unit == profile and state.chief
            if tracing:
                import tensorflow as tf

                tf.profiler.experimental.start(os.path.join(folder, "tb"))
            t0 = time.time()
            resume = {}
            if partial is not None and unit == first:
                resume = {"start": partial["batches"], "earlier": partial["values"]}

            def keep(batches, values):  # called within this unit only
                state.save_partial(unit, batches, values, {"train_seconds": round(since + time.time() - t0, 4),
                                                           "train_units": units_since, "task": task.pending()})

            watch = _UnitWatch(task, unit, options, label, resume, keep if part_way else None, last_save)
            try:
                values = task.train_unit(unit, on_block=_guarded(task, unit, on_block, watch), **resume)
            except _PartWay as stop:  # a Ctrl-C / SIGTERM between batches: keep them, then stop
                keep(stop.batches, watch.values())
                print(f"{label}checkpointed part-way through {task.unit} {unit + 1}, after batch {stop.batches} of "
                      f"{task.steps_per_unit}", flush=True)
                run.raise_stop(run.stop_requested())
            finally:
                if tracing:
                    tf.profiler.experimental.stop()
            if watch.saved:
                last_save = watch.saved
            since, units_since = since + time.time() - t0, units_since + 1
            if tracing:
                trace_dir = os.path.join(folder, "tb", "plugins", "profile")
                print(f"{label}profiler trace of {task.unit} {unit + 1} in {trace_dir}", flush=True)
            check_finite(values, task.unit, unit)
            losses = task.unit_losses(values)
            writer.scalars({f"loss/{k}": v for k, v in losses.items()}, unit)
            last = unit == total - 1
            if options.histogram_every and (unit % options.histogram_every == 0 or last):
                writer.weights(task.models(), unit)
            shown = {k: v for k, v in losses.items() if k in task.key_losses or not task.key_losses}
            if task.evaluate_at(unit) or last:
                evaluation = task.evaluate(unit)
                writer.scalars(evaluation.scalars, unit)
                writer.pr_curves(evaluation.curves, unit)
                evaluation.record = dict({"losses": losses}, **evaluation.record, train_seconds=round(since, 4),
                                         train_units=units_since)
                score = task.selection_score(evaluation.record) if selected is not None else -np.inf
                new_best = score > best
                if new_best:  # kept before the record that names it is checkpointed
                    selected.write(unit + 1)
                task.before_record(evaluation, state.history)
                state.record(evaluation.record)
                if new_best:
                    selected.commit(evaluation.record["epoch"], score, task.record_name(evaluation.record))
                    best = score
                last_save = time.time()
                since, units_since = 0.0, 0
                task.after_record(evaluation, state.history)
                shown.update({k: v for k, v in evaluation.scalars.items() if k in task.headline})
                if on_record is not None:
                    on_record(state.history)
            elif alone and (options.checkpoint_seconds and time.time() - last_save >= options.checkpoint_seconds
                            or run.stop_requested() is not None  # a stop waited for this unit: keep it
                            or (partial is not None and unit == first)):  # supersedes the part-way checkpoint
                state.save_between(unit, {"train_seconds": round(since, 4), "train_units": units_since,
                                          "task": task.pending()})
                last_save = time.time()
            writer.flush()
            progress.update(unit + 1, shown)
    if not state.history:
        raise DataError(f"{folder}: the run is complete but holds no evaluation history; pass --overwrite to "
                        "train it again")
    return FitResult(state.history, total - first)


def _keep_restored_best(task: Task, state, selected, best: float) -> None:
    """A run stopped after checkpointing a new best record but before naming its model the selected
    one resumes from exactly that model: keep it now (later units may never beat it). A best record
    older than the restored checkpoint (a run from before selection was kept) cannot be recovered."""
    from common import training

    if not state.history or not np.isfinite(best):
        return
    record = next(r for r in state.history if task.selection_score(r) == best)  # the first best, as in the loop
    kept = training.selected_checkpoint(state.ckpt.directory) if state.chief else None  # workers: a throwaway
    if record is state.history[-1] and state.start_epoch == record["epoch"] + 1 and (
            not state.chief or kept is None or kept["epoch"] != record["epoch"]):
        selected.write(state.start_epoch)
        selected.commit(record["epoch"], best, task.record_name(record))


def _guarded(task, unit, on_block, watch):
    def check(first, values):
        check_finite(values, task.unit, unit, offset=first)
        if on_block is not None:
            on_block(first, values)
        watch(first, values)
    return check


class _PartWay(Exception):
    """A stop between two batches of a unit that `Task.part_way` can checkpoint there."""

    def __init__(self, batches: int):
        super().__init__(batches)
        self.batches = batches


class _UnitWatch:
    """Within a unit: a progress line when it has run `inner_progress_seconds` since the last one
    (an end-to-end epoch can take an hour on a CPU) and, where the task can (`keep` saves a part-way
    checkpoint; `last_save`: the time of the last checkpoint), a stop or a timed checkpoint between
    two batches."""

    def __init__(self, task, unit, options, label, resume, keep: Optional[Callable], last_save: float):
        self.task, self.unit, self.options, self.label = task, unit, options, label
        self.steps = task.steps_per_unit
        self.start = resume.get("start", 0)
        self.earlier = resume.get("earlier") or {}
        self.collected: Dict[str, list] = {}
        self.t0 = self.shown = time.time()
        self.keep, self.last_save, self.saved = keep, last_save, None

    def values(self) -> Dict[str, np.ndarray]:
        """The logged outputs of the unit's batches so far (those before a resume included)."""
        keys = set(self.earlier) | set(self.collected)
        return {k: np.concatenate([np.asarray(self.earlier.get(k, []), np.float32)]
                                  + [np.asarray(v, np.float32).reshape(-1) for v in self.collected.get(k, [])])
                for k in keys}

    def __call__(self, first, values) -> None:
        done = first + len(next(iter(values.values())))
        if self.keep is not None:
            for k, v in values.items():
                self.collected.setdefault(k, []).append(np.asarray(v))
        if self.steps is None or done >= self.steps:
            return
        from common import run

        now = time.time()
        if self.options.inner_progress_seconds and now - self.shown >= self.options.inner_progress_seconds:
            from tqdm import tqdm

            self.shown = now
            rate = (done - self.start) / (now - self.t0)
            print(tqdm.format_meter(done, self.steps, now - self.t0, unit="batch", ascii=True, ncols=0,
                                    prefix=f"{self.label}{self.task.unit} {self.unit + 1}", rate=rate,
                                    initial=self.start), flush=True)
        if self.keep is None:
            return
        if run.stop_requested() is not None:
            raise _PartWay(done)
        if self.options.checkpoint_seconds and now - (self.saved or self.last_save) >= self.options.checkpoint_seconds:
            self.keep(done, self.values())
            self.saved = time.time()


def check_finite(values: Dict[str, np.ndarray], unit_name: str, unit: int, offset: int = 0) -> None:
    """The divergence guard of every method: one message format, exit code 3 (common.run)."""
    arrays = {k: np.atleast_1d(np.asarray(v, np.float64)) for k, v in values.items()}
    if not arrays:
        return
    ok = np.all([np.isfinite(v) for v in arrays.values()], axis=0)
    if ok.all():
        return
    i = int(np.argmin(ok))
    bad = {k: float(v[i]) for k, v in arrays.items() if not np.isfinite(v[i])}
    where = f"{unit_name} {unit + 1}" + (f", batch {offset + i + 1}" if len(ok) > 1 or offset else "")
    raise DivergenceError(f"non-finite {', '.join(f'{k}={v}' for k, v in bad.items())} at {where}; the last good "
                          "checkpoint and results are kept")


def _block_printer(task, unit, options, label, start):
    """The release's per-batch loss lines, printed as each compiled call returns."""
    steps = getattr(task, "steps_per_unit", None)

    def show(first, values):
        now = time.time() - start
        n = len(next(iter(values.values())))
        for j in range(n):
            i = first + j
            if i % options.log_every == 0 or (steps is not None and i == steps - 1):
                when = f" time: {now:.4f}," if options.batch_times else ""
                total = f"/{steps:4d}" if steps is not None else ""
                print(f"{label}Epoch: [{unit:2d}][{i:4d}{total}]{when} "
                      + ", ".join(f"{k}: {float(v[j]):.8f}" for k, v in values.items()), flush=True)
    return show


class Progress:
    """One line per epoch or cycle: count, elapsed, ETA, rate and the key numbers (tqdm's meter)."""

    def __init__(self, total: int, first: int, unit: str, label: str = ""):
        self.total, self.first, self.unit, self.label = total, first, unit, label.strip()
        self.start = time.time()

    def update(self, done: int, values: dict) -> None:
        from tqdm import tqdm

        elapsed = time.time() - self.start
        rate = (done - self.first) / elapsed if elapsed > 0 else None
        post = ", ".join(f"{k.split('/', 1)[-1]}={v:.4g}" for k, v in values.items())
        line = tqdm.format_meter(done, self.total, elapsed, unit=self.unit, ascii=True, ncols=0,
                                 prefix=f"{self.label} {self.unit}s".strip(), postfix=post, rate=rate)
        print(line, flush=True)


# --------------------------------------------------------------------------- TensorBoard

class Summaries:
    """The one TensorBoard layout: loss/<name>, test|val/<metric>, weights/<model>/<variable>
    histograms, pr/<direction> PR curves, an HParams session, final/<metric>. Only the chief writes."""

    def __init__(self, logdir: str, replicas=None):
        from common import training

        self.inner = training.SummaryWriter(logdir, replicas)

    def scalars(self, values: dict, step: int) -> None:
        self.inner.scalars(values, step)

    def weights(self, models: dict, step: int) -> None:
        values = {}
        for name, model in models.items():
            for v in model.weights:
                path = getattr(v, "path", v.name)  # Keras 3: "<model>/<layer>/<variable>"
                path = path[len(model.name) + 1:] if path.startswith(f"{model.name}/") else path
                values[f"weights/{name}/{path}"] = v
        self.inner.histograms(values, step)

    def pr_curves(self, curves: dict, step: int) -> None:
        """i2t / t2i PR curves; at most 1,000 queries each, scores mapped to [0, 1]."""
        from common.dataset import relevance

        for name, (q, g, ql, gl, distance) in curves.items():
            q, g = np.asarray(q, np.float32)[:1000], np.asarray(g, np.float32)
            ql = np.asarray(ql)[:1000]
            if distance == "hamming":
                qs, gs = np.where(q >= 0, 1.0, -1.0), np.where(g >= 0, 1.0, -1.0)
                score = 0.5 * (1.0 + qs @ gs.T / q.shape[1])  # 1 - Hamming / K
            else:
                unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # noqa: E731
                score = 0.5 * (1.0 + unit(q) @ unit(g).T)
            self.inner.pr_curve(f"pr/{name}", relevance(ql, np.asarray(gl)), score, step)

    def hparams(self, config: dict, trial: str) -> None:
        from tensorboard.plugins.hparams import api as hp

        with self.inner.writer.as_default():
            hp.hparams(_hparam_values(config), trial_id=trial)

    def flush(self) -> None:
        self.inner.flush()


def _hparam_values(config: dict) -> dict:
    def value(v):
        if isinstance(v, (bool, int, float, str)):
            return v
        return "None" if v is None else json.dumps(v, default=str)
    return {k: value(v) for k, v in flatten(config).items()}


def session_hparams(value) -> tuple:
    """(trial, {name: number, string or bool}) of an HParams session-start summary value."""
    from tensorboard.plugins.hparams import metadata

    info = metadata.parse_session_start_info_plugin_data(value.metadata.plugin_data.content)
    return info.group_name, {k: getattr(v, v.WhichOneof("kind")) for k, v in info.hparams.items()}


class _CurrentHParams:
    """Called on each event of a resumed run's logs: true for an HParams session-start summary of
    other settings (those of the schedule before an --extend: TensorBoard keeps a tag's first
    metadata, so the view would show the old length), which is then dropped and written anew;
    `seen` once the current one is found."""

    def __init__(self, config: dict, trial: str):
        self.want, self.seen = (trial, _hparam_values(config)), False

    def __call__(self, event) -> bool:
        from tensorboard.plugins.hparams import metadata

        for value in event.summary.value:
            if value.tag == metadata.SESSION_START_INFO_TAG:
                current = session_hparams(value) == self.want
                self.seen = self.seen or current
                return not current
        return False


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out

