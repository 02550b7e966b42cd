"""Training utilities: seeding, checkpoint/resume, TensorBoard summaries, in-graph epochs."""

from __future__ import annotations

import errno
import glob
import os
import shutil
from typing import Callable, Dict, Iterable, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from common import io, pipelines
from common.errors import DataError, op_error_reason

CHECKPOINTS = "checkpoints"


def set_seed(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and TF; optionally make TF ops deterministic (same seed, same run)."""
    keras.utils.set_random_seed(int(seed))
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def build_optimizer(optimizer: keras.optimizers.Optimizer, variables: Iterable[tf.Variable]) -> None:
    """Create the optimizer's slot variables now.

    A checkpoint restored into an unbuilt Keras 3 optimizer silently drops its moments
    (they have nowhere to go); building first makes restore exact.
    """
    if not optimizer.built:
        optimizer.build(list(variables))


def batched(fn, x: np.ndarray, batch: int = 4096) -> np.ndarray:
    """Apply a (compiled) model function to `x` in row batches; bounded memory for large splits."""
    return np.concatenate([np.asarray(fn(tf.constant(x[s:s + batch]))) for s in range(0, len(x), batch)])


def variable_index(model) -> tf.Module:
    """Every variable of a Keras model, keyed by its position in `model.variables`.

    Keras 3 models are not reliable `tf.train.Checkpoint` dependencies (their variables were
    reached only through the optimizers' slot lists), so each model in a checkpoint also gets
    this index, and a model can be restored on its own (export). Positions, not names: layer
    names that Keras generates (`dense_1`) depend on what else the process built before.
    """
    index = tf.Module(name=f"{model.name}_variables")
    index.vars = [v.value if hasattr(v, "value") else v for v in model.variables]
    return index


def latest_checkpoint(directory: str) -> Optional[str]:
    """The checkpoint the index in `directory` names; None when there is no checkpoint yet.

    Anything else is damage and raises `DataError` naming the file (TensorFlow's own lookup
    returns None for a garbled index, which would silently restart a run from scratch).
    """
    if not os.path.isdir(directory):
        return None
    index = os.path.join(directory, "checkpoint")
    what_to_do = "repair or remove it, or pass --overwrite to start the run over"
    if not os.path.exists(index):
        if any(name.startswith("ckpt-") and not name.endswith("_temp") for name in os.listdir(directory)):
            raise DataError(f"{directory}: holds checkpoint files but no index file 'checkpoint'; {what_to_do}")
        return None
    from google.protobuf import text_format
    from tensorflow.python.checkpoint.checkpoint_management import CheckpointState

    try:
        with open(index, encoding="utf-8") as f:
            state = text_format.Parse(f.read(), CheckpointState())
    except (OSError, UnicodeDecodeError, text_format.ParseError) as e:
        reason = str(e).splitlines()[0][:120]
        raise DataError(f"{index}: unreadable checkpoint index ({reason}); {what_to_do}") from None
    path = state.model_checkpoint_path
    if not path:
        raise DataError(f"{index}: the checkpoint index names no checkpoint; {what_to_do}")
    path = path if os.path.isabs(path) else os.path.join(directory, path)
    if not os.path.exists(path + ".index"):
        raise DataError(f"{index}: names {os.path.basename(path)}, whose files are missing; {what_to_do}")
    return path


class Checkpointer:
    """`tf.train.Checkpoint` + `CheckpointManager` with resume of step and data position.

    `objects` are models, optimizers, `tf.data` iterators and variables. Optimizers must be
    passed as (optimizer, variables) pairs so they are built before any restore.
    """

    def __init__(self, directory: str, max_to_keep: int = 3, write_directory: str | None = None, **objects):
        """`write_directory`: where saves go when not `directory` (a non-chief worker restores
        the chief's checkpoints but writes its own, throwaway ones)."""
        self.directory = directory
        self.write_directory = write_directory or directory
        self.latest = latest_checkpoint(directory)  # before the manager, which reads the index itself
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        tracked = {}
        for name, obj in objects.items():
            if isinstance(obj, tuple):
                optimizer, variables = obj
                build_optimizer(optimizer, variables)
                obj = optimizer
            tracked[name] = obj
            if isinstance(obj, keras.layers.Layer):  # models and bare layers (ACMR's label classifier)
                tracked[f"{name}__variables"] = variable_index(obj)
        self.checkpoint = tf.train.Checkpoint(step=self.step, epoch=self.epoch, **tracked)
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.write_directory, max_to_keep=max_to_keep)

    def restore_or_initialize(self) -> bool:
        """Restore the latest checkpoint if there is one; True when resumed."""
        latest = self.latest
        if latest is None:
            return False
        try:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
        except (tf.errors.OpError, ValueError, AssertionError) as e:
            raise DataError(f"{latest}: cannot resume from this checkpoint ({op_error_reason(e)}); it is damaged or "
                            "from another configuration. Pass --overwrite to start the run over") from None
        return True

    def save(self, number: int | None = None) -> str:
        """Save; a failed or interrupted save (a full disk, Ctrl-C, SIGTERM) leaves the previous
        checkpoints and no temporary files."""
        number = int(self.step.numpy()) if number is None else number
        kept = "the previous checkpoint is kept" if self.manager.latest_checkpoint else "none was written"
        return _saving(lambda: self.manager.save(checkpoint_number=number), self.write_directory, f"ckpt-{number}",
                       f"checkpoint {number}", kept)


def _saving(save: Callable, directory: str, prefix: str, what: str, kept: str):
    """Run `save` (writing `directory/prefix`); on failure remove its temporary files and raise one
    OSError saying what was kept."""
    try:
        return save()
    except BaseException as e:
        for leftover in glob.glob(os.path.join(directory, f"{prefix}_temp*")):
            if os.path.isdir(leftover):
                shutil.rmtree(leftover, ignore_errors=True)
            elif os.path.lexists(leftover):
                os.unlink(leftover)
        if not isinstance(e, (tf.errors.OpError, OSError)):
            raise
        reason = getattr(e, "strerror", None) or op_error_reason(e)
        raise OSError(errno.EIO, f"cannot save {what} ({reason}); {kept}", directory) from None


PARTIAL = "partial"  # checkpoints/partial/: the state part-way through an epoch (RunState.save_partial)
PARTIAL_FILE = "partial.json"
SELECTED = "selected"  # checkpoints/selected/: the model of the evaluation a run's results report
SELECTED_FILE = "selected.json"


def epoch_name(epoch) -> str:
    """An evaluation as results.json names it, by default (a task may name its own: `Task.record_name`)."""
    return f"history.json's epoch {epoch}"


def selected_checkpoint(ckpt_dir: str) -> Optional[dict]:
    """What `SelectedModel` kept under `ckpt_dir`: {"path", "epoch", "criterion", ...}; None when
    the run keeps none (its results describe its last checkpoint)."""
    record_path = os.path.join(ckpt_dir, SELECTED, SELECTED_FILE)
    if not os.path.exists(record_path):
        return None
    try:
        record = io.read_json(record_path)
        path = os.path.join(ckpt_dir, SELECTED, record["checkpoint"])
    except (DataError, KeyError, TypeError) as e:
        raise DataError(f"{record_path}: damaged ({io.damage(record_path, e)}); `cmr export --checkpoint latest` "
                        "still exports the last checkpoint; training the run again needs --overwrite") from None
    if not os.path.exists(path + ".index"):
        raise DataError(f"{record_path}: names {record['checkpoint']}, whose files are missing")
    return dict({"name": epoch_name(record.get("epoch"))}, **record, path=path)  # older runs' files have no name


class SelectedModel:
    """The weights of the evaluation a run's results report when that is not the last one (cmhash's
    epoch chosen on validation), which the rolling checkpoints would have dropped: model variables
    only, under `checkpoints/selected/`, restorable by `common.export.restore_models`.

    `write` runs before the evaluation's record is checkpointed and `commit` after it, so the kept
    model always belongs to a recorded evaluation: a run stopped after `write` but before the record's
    checkpoint resumes with the previous choice (the uncommitted files are removed) and evaluates that
    epoch again; one stopped after the checkpoint resumes from that very model, which the driver then
    keeps (`driver._keep_restored_best`)."""

    def __init__(self, out_dir: str, models: dict, criterion: str, chief: bool = True,
                 write_directory: Optional[str] = None):
        self.ckpt_dir = os.path.join(out_dir, CHECKPOINTS)
        self.directory = os.path.join(self.ckpt_dir, SELECTED)
        self.write_directory = write_directory or self.directory
        self.criterion, self.chief = criterion, chief
        self.checkpoint = tf.train.Checkpoint(**{f"{k}__variables": variable_index(m) for k, m in models.items()})
        self.checkpoint.save_counter  # noqa: B018 (created, as `save` would: a restore expects it)
        self._pending: Optional[str] = None
        if chief:
            self._remove_others(keep=(selected_checkpoint(self.ckpt_dir) or {}).get("checkpoint"))

    def write(self, number: int) -> None:
        prefix = f"ckpt-{number}"
        _saving(lambda: self.checkpoint.write(os.path.join(self.write_directory, prefix)), self.write_directory,
                prefix, f"the selected model ({prefix})", "the previous one is kept")
        self._pending = prefix

    def commit(self, epoch: int, score: float, name: str) -> None:
        """Make the written model the selected one (its evaluation, `name`d as results.json names it,
        is now recorded)."""
        if self._pending is None or not self.chief:
            return
        io.write_json(os.path.join(self.directory, SELECTED_FILE),
                      {"checkpoint": self._pending, "epoch": int(epoch), "criterion": self.criterion,
                       "score": float(score), "name": name})
        self._remove_others(keep=self._pending)
        self._pending = None

    def _remove_others(self, keep: Optional[str]) -> None:
        if os.path.isdir(self.directory):
            _keep_only(self.directory, SELECTED_FILE, keep)


def _keep_only(directory: str, record: str, keep: Optional[str]) -> None:
    """Remove every entry of `directory` but its `record` file and the files of checkpoint `keep`
    (None: keep no checkpoint): the folders that hold one checkpoint and the record naming it."""
    for name in os.listdir(directory):
        if name == record or keep is not None and (name == keep + ".index" or name.startswith(keep + ".data-")):
            continue
        path = os.path.join(directory, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)


class RunState:
    """One model's evaluation history (`history.json`) and checkpoints under a run folder.

    Every entry point resumes the same way: re-running the command restores the latest
    checkpoint and the history written before it. `record` writes the history first, then the
    checkpoint that refers to it; records of evaluations after the restored checkpoint (a crash
    between the two writes) are dropped on resume, since that work is done again. An unreadable
    checkpoint index, checkpoint or history is a `DataError`, never a silent restart.
    """

    def __init__(self, out_dir: str, replicas=None, **objects):
        """`replicas` (common.distribute.Replicas): only its chief writes history and checkpoints."""
        self.chief = replicas is None or replicas.is_chief
        directory = os.path.join(out_dir, CHECKPOINTS)
        write = directory if self.chief else replicas.write_dir(directory)
        self.ckpt = Checkpointer(directory, write_directory=write, **objects)
        self.history_path = os.path.join(out_dir, "history.json")
        self.history: list = []
        self._pending: dict = {}  # checkpoint number -> what was counted since the last record (`save_between`)
        self.resumed = self.ckpt.restore_or_initialize()
        self.partial = self._restore_partial() if self.chief else None
        self.resumed = self.resumed or self.partial is not None
        if self.resumed:
            if not os.path.exists(self.history_path):
                raise DataError(f"{self.history_path}: missing beside the checkpoints in {directory}; pass "
                                "--overwrite to start the run over")
            try:
                data = io.read_json(self.history_path)
                history, pending = data["history"], data.get("pending", {})
                if not isinstance(history, list) or not isinstance(pending, dict):
                    raise TypeError("'history' is not a list" if not isinstance(history, list) else
                                    "'pending' is not an object")
            except (DataError, KeyError, TypeError, AttributeError) as e:
                raise DataError(f"{self.history_path}: damaged ({io.damage(self.history_path, e)}); pass --overwrite "
                                "to start the run over") from None
            self.history = [r for r in history if r.get("epoch", -1) < self.start_epoch]
            self._pending = {k: v for k, v in pending.items() if k.isdigit() and int(k) <= self.start_epoch}

    @property
    def pending(self) -> dict:
        """What the restored checkpoint counted since the last record ({} after a record)."""
        if self.partial is not None:
            return self.partial["pending"]
        return self._pending.get(str(self.start_epoch), {})

    @property
    def partial_dir(self) -> str:
        return os.path.join(self.ckpt.directory, PARTIAL)

    def _restore_partial(self) -> Optional[dict]:
        """The part-epoch checkpoint over the latest whole one, when it was taken after it: {"epoch",
        "batches" (done), "values" (their logged outputs), "pending"}; None without one, or when a later
        whole epoch has been checkpointed since (it is then stale, and removed at the next save)."""
        path = os.path.join(self.partial_dir, PARTIAL_FILE)
        if not os.path.exists(path):
            return None
        fix = (f"remove {self.partial_dir} to resume from the last whole epoch, or pass --overwrite to start the "
               "run over")
        try:
            record = io.read_json(path)
            prefix = os.path.join(self.partial_dir, record["checkpoint"])
            after, batches = record["after"], int(record["batches"])
            if not isinstance(record["values"], dict) or not isinstance(record["pending"], dict) or batches < 1:
                raise TypeError("'values' and 'pending' must be objects and 'batches' positive")
        except (DataError, KeyError, TypeError, ValueError) as e:
            raise DataError(f"{path}: damaged ({io.damage(path, e)}); {fix}") from None
        latest = self.ckpt.latest
        if after != (os.path.basename(latest) if latest else None):
            return None
        try:
            self.ckpt.checkpoint.restore(prefix).assert_existing_objects_matched()
        except (tf.errors.OpError, ValueError, AssertionError) as e:
            raise DataError(f"{prefix}: cannot resume from this part-epoch checkpoint ({op_error_reason(e)}); "
                            f"{fix}") from None
        return dict(record, epoch=int(self.ckpt.epoch.numpy()), batches=batches)

    def save_partial(self, epoch: int, batches: int, values: Dict[str, np.ndarray], pending: dict) -> None:
        """Checkpoint part-way through `epoch` (after `batches` of its batches), beside the whole-epoch
        checkpoints, which stay as they were: written first, then named by partial.json, which a
        resume reads; the previous part-epoch checkpoint is removed after that. Why: an end-to-end
        epoch can take an hour on a CPU, and a stop should neither wait for it nor lose it."""
        folder = self.partial_dir
        name = f"ckpt-{epoch}-{batches}"
        self.ckpt.epoch.assign(epoch)
        os.makedirs(folder, exist_ok=True)
        _saving(lambda: self.ckpt.checkpoint.write(os.path.join(folder, name)), folder, name,
                f"the part-epoch checkpoint {name}", "the previous checkpoints are kept")
        if not os.path.exists(self.history_path):  # a resume needs it beside the checkpoint
            io.write_json(self.history_path, {"history": self.history, "pending": self._pending})
        latest = self.ckpt.manager.latest_checkpoint
        io.write_json(os.path.join(folder, PARTIAL_FILE), {
            "checkpoint": name, "batches": int(batches), "after": os.path.basename(latest) if latest else None,
            "values": {k: [float(x) for x in np.asarray(v).reshape(-1)] for k, v in values.items()},
            "pending": pending})
        _keep_only(folder, PARTIAL_FILE, name)
        self.partial = None

    def _clear_partial(self) -> None:
        """A whole epoch is checkpointed: an earlier part-epoch checkpoint is stale."""
        self.partial = None
        if self.chief and os.path.isdir(self.partial_dir):
            shutil.rmtree(self.partial_dir, ignore_errors=True)

    def save_between(self, epoch: int, pending: dict) -> None:
        """Checkpoint after `epoch` without an evaluation (a long interval between evaluations, so that
        a stopped run loses little): `pending` — the training time, units and task counts since the
        last record — goes into history.json under the checkpoint's number, for the resume."""
        self._pending[str(epoch + 1)] = pending
        if self.chief:
            io.write_json(self.history_path, {"history": self.history, "pending": self._pending})
        self.ckpt.epoch.assign(epoch + 1)
        self.ckpt.save(number=epoch + 1)
        self._clear_partial()

    @property
    def start_epoch(self) -> int:
        return int(self.ckpt.epoch.numpy())

    def record(self, record: dict) -> None:
        """Append an evaluation record for `record["epoch"]` and checkpoint the state after it."""
        self.history.append(record)
        self._pending = {}
        if self.chief:
            io.write_json(self.history_path, {"history": self.history})
        self.ckpt.epoch.assign(record["epoch"] + 1)
        self.ckpt.save(number=record["epoch"] + 1)
        self._clear_partial()


HISTOGRAM_BUCKETS = 30  # tf.summary.histogram's default


def histogram_buckets(values: np.ndarray, count: int = HISTOGRAM_BUCKETS) -> np.ndarray:
    """`(count, 3)` rows of [left edge, right edge, count], as `tf.summary.histogram` buckets them
    (equal widths from min to max, the max in the last bucket; one value: all in the last bucket),
    in memory linear in the number of values. Non-finite values are left out."""
    data = np.asarray(values, np.float64).ravel()
    data = data[np.isfinite(data)]
    out = np.zeros((count, 3))
    if data.size == 0:
        return out
    low, high = data.min(), data.max()
    if low == high:
        out[:, :2] = high
        out[-1, 2] = data.size
        return out
    index = np.minimum(np.floor((data - low) / ((high - low) / count)).astype(np.int64), count - 1)
    edges = np.linspace(low, high, count + 1)
    edges[-1] = high
    out[:, 0], out[:, 1], out[:, 2] = edges[:-1], edges[1:], np.bincount(index, minlength=count)
    return out


class SummaryWriter:
    """Thin `tf.summary` helper writing under one log directory."""

    def __init__(self, logdir: str, replicas=None):
        """Non-chief workers (`replicas`) write nothing."""
        self.chief = replicas is None or replicas.is_chief
        self.writer = tf.summary.create_file_writer(logdir) if self.chief else tf.summary.create_noop_writer()

    def scalars(self, values: Dict[str, float], step: int) -> None:
        with self.writer.as_default(step=int(step)):
            for name, value in values.items():
                tf.summary.scalar(name, float(value))

    def histograms(self, values: Dict[str, object], step: int) -> None:
        """What `tf.summary.histogram` writes, bucketed by `histogram_buckets` (its own bucketing
        builds an n x 30 float64 one-hot: 2 GB for one of ZSCRGAN's or JFSE's release-width kernels)."""
        if not self.chief:
            return
        from tensorboard.plugins.histogram import metadata as histogram_metadata

        meta = histogram_metadata.create_summary_metadata(display_name=None, description=None)
        with self.writer.as_default(step=int(step)):
            for name, value in values.items():
                buckets = histogram_buckets(tf.convert_to_tensor(value).numpy())
                tf.summary.write(name, tf.constant(buckets, tf.float64), metadata=meta)

    def pr_curve(self, tag: str, relevance: np.ndarray, scores: np.ndarray, step: int,
                 num_thresholds: int = 101) -> None:
        """Retrieval PR curve for TensorBoard's PR-curve plugin.

        `scores` in [0, 1] (e.g. (1 + cosine) / 2) and boolean `relevance` of the same shape,
        pooled over queries; the curve sweeps a score threshold.
        """
        from tensorboard.plugins.pr_curve import metadata as pr_metadata

        data = pr_curve_data(np.asarray(relevance, bool).ravel(),
                             np.asarray(scores, np.float64).ravel(), num_thresholds)
        meta = pr_metadata.create_summary_metadata(display_name=tag, description="",
                                                   num_thresholds=num_thresholds)
        with self.writer.as_default(step=int(step)):
            tf.summary.write(tag, tf.constant(data, tf.float32), metadata=meta)

    def flush(self) -> None:
        self.writer.flush()


def drop_events_from(logdir: str, step: Optional[int], also: Optional[Callable] = None) -> int:
    """Remove the summaries at `step` and later (None: none by step) from the event files under
    `logdir`, and those for which `also(event)` is true: on a resume they come from the stopped
    session's epochs after its last checkpoint, which are trained again, and TensorBoard would draw
    both versions (its data server does not purge them). Files are rewritten atomically, and only
    when they hold such events; returns how many were dropped."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    dropped = 0
    for path in sorted(glob.glob(os.path.join(logdir, "*tfevents*"))):
        keep, drop = [], 0
        for payload in RawEventFileLoader(path).Load():  # stops at a partial last record (a killed writer)
            event = event_pb2.Event.FromString(payload)
            if event.HasField("summary") and ((step is not None and event.step >= step)
                                              or (also is not None and also(event))):
                drop += 1
            else:
                keep.append(payload)
        if drop:
            with io.atomic_open(path, "wb") as f:
                writer = RecordWriter(f)
                for payload in keep:
                    writer.write(payload)
            dropped += drop
    return dropped


def pr_curve_data(relevance: np.ndarray, scores: np.ndarray, num_thresholds: int) -> np.ndarray:
    """(6, T) array [TP, FP, TN, FN, precision, recall] at thresholds i/(T-1), as the plugin expects."""
    bins = np.clip(np.floor(np.clip(scores, 0, 1) * (num_thresholds - 1)).astype(np.int64),
                   0, num_thresholds - 1)
    tp_hist = np.bincount(bins[relevance], minlength=num_thresholds)
    fp_hist = np.bincount(bins[~relevance], minlength=num_thresholds)
    tp = np.cumsum(tp_hist[::-1])[::-1].astype(np.float64)  # scores >= threshold i
    fp = np.cumsum(fp_hist[::-1])[::-1].astype(np.float64)
    tn = fp[0] - fp
    fn = tp[0] - tp
    precision = tp / np.maximum(tp + fp, 1e-12)
    recall = tp / np.maximum(tp + fn, 1e-12)
    return np.stack([tp, fp, tn, fn, precision, recall])


def graph_function(fn: Callable, **kwargs) -> Callable:
    """`tf.function` without AutoGraph, for every step and encoder of the methods: they hold no
    Python control flow on tensors (one would fail at trace time, not change the graph), and
    converting their source cost JFSE 9 of the 24 s its first epoch took (two AVX2 cores)."""
    return tf.function(fn, autograph=False, **kwargs)


class EpochRunner:
    """An epoch of batches fed and stepped inside one `tf.function`.

    Why: on two CPU cores a Python loop that pulls each batch from a `tf.data` iterator and
    calls the compiled step cost 1.2-1.5x the step itself (docs/benchmarks.md). Here the
    epoch's row order (`pipelines.epoch_order`: the same batches as `pipelines.epoch_indices`,
    so a resumed run continues exactly), the gather from tensors held in memory and the step
    run in one graph, `steps_per_execution` batches per call (0: the whole epoch). Full batches
    have a static batch dimension; a last partial batch runs in a call of its own (a dynamic
    batch dimension made the whole step slower). The step's outputs named in `outputs` come
    back per batch (as float32) for logs and the NaN guard.

    `jit_compile`: XLA compiles the loop over a call's batches, gathers included (the row order
    is drawn outside it, XLA has no stateless shuffle); against XLA on the step alone this took
    cmhash from 1.42 to 1.09 ms per batch and ACMR from 10.8 to 9.4. The step must draw no
    random numbers (XLA's kernels draw other ones); JFSE passes its own XLA step instead. The
    once-per-epoch partial batch runs the plain step (or `tail_step`): a second XLA compilation
    for its shape cost more than it saves (README command 1: 94 s -> 81 s).

    The step runs unconverted inside the loop's AutoGraph function, as `graph_function` says why.
    """

    def __init__(self, step: Callable, tensors: Dict[str, tf.Tensor], args: Sequence[str],
                 outputs: Sequence[str], batch_size: int, shuffle: bool = False, seed: int = 0,
                 drop_remainder: bool = False, steps_per_execution: int = 0, jit_compile: bool = False,
                 tail_step: Optional[Callable] = None):
        self.n = int(tensors[args[0]].shape[0])
        if self.n == 0:
            raise ValueError("cannot batch an empty split")
        self.tensors, self.args, self.outputs = tensors, tuple(args), tuple(outputs)
        self.batch_size, self.shuffle, self.seed = int(batch_size), bool(shuffle), int(seed)
        self.full_steps = self.n // self.batch_size
        self.tail = 0 if drop_remainder else self.n % self.batch_size
        self.steps = self.full_steps + (1 if self.tail else 0)
        if self.steps == 0:
            raise ValueError(f"{self.n} rows are fewer than one batch of {batch_size}")
        self.per_call = max(self.full_steps, 1) if steps_per_execution <= 0 else int(steps_per_execution)
        self.step = tf.autograph.experimental.do_not_convert(step)
        self.tail_step = tf.autograph.experimental.do_not_convert(step if tail_step is None else tail_step)
        self._loop = tf.function(self._run_loop, jit_compile=True) if jit_compile else self._run_loop
        self._block = tf.function(self._run_block)
        self._tail = tf.function(self._run_tail)

    def _batch(self, rows):
        return [tf.gather(self.tensors[k], rows) for k in self.args]

    def order(self, epoch: int) -> tf.Tensor:
        """Epoch `epoch`'s row order, drawn once and shared by its calls."""
        return pipelines.epoch_order(self.n, self.shuffle, self.seed, tf.constant(epoch, tf.int64))

    def _run_block(self, order, first, count):
        rows = tf.slice(order, [first * self.batch_size], [count * self.batch_size])
        return self._loop(tf.reshape(rows, [-1, self.batch_size]))

    def _run_loop(self, rows):
        """The step over each row of `rows` (count, batch_size); under XLA one compilation per count."""
        count = tf.shape(rows)[0]
        arrays = {k: tf.TensorArray(tf.float32, size=count) for k in self.outputs}
        for j in tf.range(count):
            out = self.step(*self._batch(rows[j]))
            arrays = {k: arrays[k].write(j, tf.cast(out[k], tf.float32)) for k in self.outputs}
        return {k: a.stack() for k, a in arrays.items()}

    def _run_tail(self, order):
        out = self.tail_step(*self._batch(order[self.n - self.tail:]))
        return {k: tf.cast(out[k], tf.float32)[None] for k in self.outputs}

    def run_block(self, epoch: int, first: int, count: int, order: Optional[tf.Tensor] = None) -> Dict[str, np.ndarray]:
        """Full batches first .. first + count - 1 of epoch `epoch` in one call."""
        order = self.order(epoch) if order is None else order
        out = self._block(order, tf.constant(first, tf.int32), tf.constant(count, tf.int32))
        return {k: v.numpy() for k, v in out.items()}

    @property
    def resumes_part_way(self) -> bool:
        """More than one call per epoch: a stop between calls can be checkpointed part-way (the row
        order is the epoch's, drawn again; the step's random state is the caller's to checkpoint)."""
        return self.per_call < self.steps

    def run_epoch(self, epoch: int, on_block: Optional[Callable[[int, dict], None]] = None, start: int = 0,
                  earlier: Optional[Dict[str, Sequence[float]]] = None) -> Dict[str, np.ndarray]:
        """Every batch of epoch `epoch`; returns each output per batch. `on_block(first, values)`
        sees each call's values as they arrive (progress lines, early NaN checks, stops). `start` > 0
        continues an epoch stopped after that many batches (`earlier`: their outputs, which lead the
        returned values); the calls then begin at `start`, the same batches in the same order."""
        order = self.order(epoch)
        parts = [(0, {k: np.asarray(earlier[k], np.float32) for k in self.outputs})] if earlier else []
        for first in range(start, self.full_steps, self.per_call):
            parts.append((first, self.run_block(epoch, first, min(self.per_call, self.full_steps - first), order)))
            if on_block is not None:
                on_block(*parts[-1])
        if self.tail:
            parts.append((self.full_steps, {k: v.numpy() for k, v in self._tail(order).items()}))
            if on_block is not None:
                on_block(*parts[-1])
        return {k: np.concatenate([p[k] for _, p in parts]) for k in self.outputs}


class BatchRunner:
    """`EpochRunner`'s interface over a `tf.data` iterator, one compiled call per batch.

    For data that does not fit in memory (images decoded from files); `iterator` is
    checkpointable, so resume continues from the saved position.
    """

    resumes_part_way = True  # its position is the iterator's, which the caller checkpoints

    def __init__(self, step: Callable, dataset: tf.data.Dataset, args: Sequence[str], outputs: Sequence[str],
                 steps: int):
        self.step, self.args, self.outputs, self.steps = step, tuple(args), tuple(outputs), int(steps)
        self.iterator = iter(dataset)

    def run_epoch(self, epoch: int, on_block=None, start: int = 0,
                  earlier: Optional[Dict[str, Sequence[float]]] = None) -> Dict[str, np.ndarray]:
        """Batches `start` .. `steps` - 1 of the epoch (`start` > 0: resumed part-way, `earlier` holding
        the outputs of the batches before it, which lead the returned values). `on_block(i, values)`
        sees each batch as it ends, so a caller can show progress and stop between batches."""
        outs = []  # kept as tensors when nobody watches: no host round trip between steps
        for i in range(start, self.steps):
            b = next(self.iterator)
            out = self.step(*[b[k] for k in self.args])
            outs.append({k: tf.cast(out[k], tf.float32) for k in self.outputs})
            if on_block is not None:
                on_block(i, {k: outs[-1][k].numpy()[None] for k in self.outputs})
        values = {k: tf.stack([o[k] for o in outs]).numpy() for k in self.outputs}
        if earlier:
            values = {k: np.concatenate([np.asarray(earlier[k], np.float32), v]) for k, v in values.items()}
        return values
