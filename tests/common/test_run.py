"""The run driver's guarantees, in process (issue 16): identity, one writer, damaged state,
results with provenance, file modes, the divergence guard and the progress line."""

import dataclasses
import json
import os
import stat
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import common
from common import driver, training
from common.errors import ConfigError, DataError, DivergenceError, op_error_line, op_error_reason, tensorflow_oom
from tests import launch
from tests.common.fixtures import snapshot
from tests.conftest import REPO, as_in_a_terminal

SETTINGS = {"lr": 0.001, "seed": 0}
DATA = {"dataset": "d", "digest": "abc"}


def make_run(path, settings=SETTINGS, **kw):
    with driver.RunFolder(str(path), settings, DATA, **kw) as folder:
        folder.write_results(str(path), dataset="d", method="m", seed=0, flags=settings,
                             metrics={"i2t_map_all": 0.5, "t2i_map_all": 0.4})
        os.makedirs(path / "checkpoints", exist_ok=True)
        (path / "checkpoints" / "checkpoint").write_text('model_checkpoint_path: "ckpt-1"\n')
    return folder


def test_same_settings_resume_other_settings_are_refused_untouched(tmp_path):
    run = tmp_path / "run"
    assert not make_run(run).resumed
    with driver.RunFolder(str(run), dict(SETTINGS), DATA) as folder:
        assert folder.resumed
    before = snapshot(run)
    with pytest.raises(ConfigError, match=r"--lr 0.001 -> 0.01; --seed 0 -> 7") as e:
        with driver.RunFolder(str(run), {"lr": 0.01, "seed": 7}, DATA):
            pass
    assert "--overwrite" in str(e.value)
    with pytest.raises(ConfigError, match=r"data digest abc -> xyz"):
        driver.RunFolder(str(run), SETTINGS, dict(DATA, digest="xyz")).__enter__()
    assert snapshot(run) == before


def test_a_resumed_run_says_so_and_warns_when_the_code_changed_in_between(tmp_path, monkeypatch):
    run = tmp_path / "run"
    make_run(run)
    created = json.loads((run / "run.json").read_text())
    assert created["code"] == driver.code_state()
    with driver.RunFolder(str(run), SETTINGS, DATA) as folder:
        r = folder.write_results(str(run), dataset="d", method="m", seed=0, flags=SETTINGS,
                                 metrics={"i2t_map_all": 0.5, "t2i_map_all": 0.4})
    assert r["provenance"]["resumed"] and r["provenance"]["run_created"] == created["created"]
    assert r["warnings"] == []
    monkeypatch.setattr(driver, "code_state", lambda: {"version": "9.9", "git_commit": "abcdef0123", "git_dirty": False})
    with driver.RunFolder(str(run), SETTINGS, DATA) as folder:
        r = folder.write_results(str(run), dataset="d", method="m", seed=0, flags=SETTINGS,
                                 metrics={"i2t_map_all": 0.5, "t2i_map_all": 0.4})
    assert len(r["warnings"]) == 1 and "resumed with 9.9 (abcdef01)" in r["warnings"][0]


def test_extend_continues_a_run_only_to_a_longer_schedule_and_records_it(tmp_path):
    run = tmp_path / "run"
    short, long_ = dict(SETTINGS, epochs=None), dict(SETTINGS, epochs=8)  # started with the release's 5
    make_run(run, short, length=5)
    assert json.loads((run / "run.json").read_text())["length"] == 5
    before = snapshot(run)
    # without --extend a longer schedule is another run, with the way to continue it named
    with pytest.raises(ConfigError, match=r"--epochs \(default\) -> 8\. To continue it to 8 epochs, pass --extend"):
        driver.RunFolder(str(run), long_, DATA, length=8).__enter__()
    refusals = [  # (settings, data, length, extra flags, message)
        (dict(long_, lr=0.5), DATA, 8, {}, r"only a longer schedule \(--epochs\); every other setting must match"),
        (long_, dict(DATA, digest="x"), 8, {}, r"only a longer schedule"),
        (dict(SETTINGS, epochs=4), DATA, 4, {}, r"needs a longer schedule than the run's 5 epochs; this command plans 4"),
        (long_, DATA, 8, {"overwrite": True}, r"^--extend continues the run in --output_dir and --overwrite starts"),
        (long_, DATA, None, {}, r"no schedule to lengthen"),
        (long_, DATA, 8, {"fixed_length": "its weights follow --epochs"}, r"cannot lengthen this run: its weights follow"),
    ]
    for settings, data, length, extra, message in refusals:
        with pytest.raises(ConfigError, match=message):
            driver.RunFolder(str(run), settings, data, length=length, extend=True, **extra).__enter__()
    with pytest.raises(ConfigError, match=r"^--extend: .* holds no run to continue"):
        driver.RunFolder(str(tmp_path / "none"), long_, DATA, length=8, extend=True).__enter__()
    assert snapshot(run) == before and not (tmp_path / "none").exists()
    with driver.RunFolder(str(run), long_, DATA, length=8, extend=True) as folder:
        assert folder.resumed
        r = folder.write_results(str(run), dataset="d", method="m", seed=0, flags=long_,
                                 metrics={"i2t_map_all": 0.5, "t2i_map_all": 0.4})
    record = json.loads((run / "run.json").read_text())
    assert record["settings"] == long_ and record["length"] == 8
    assert [(e["from"], e["to"]) for e in record["extensions"]] == [(5, 8)]
    assert r["provenance"]["extensions"] == record["extensions"]
    # the extended run is now the run: its own command resumes it (with or without --extend), the old one
    # is refused; a run from before lengths were recorded cannot be extended
    for extend in (False, True):
        with driver.RunFolder(str(run), long_, DATA, length=8, extend=extend) as folder:
            assert folder.resumed and folder.extensions == record["extensions"]
    with pytest.raises(ConfigError, match=r"--epochs 8 -> \(default\)"):
        driver.RunFolder(str(run), short, DATA, length=5).__enter__()
    old = tmp_path / "old"
    make_run(old, short)
    with pytest.raises(ConfigError, match=r"does not record the run's length"):
        driver.RunFolder(str(old), long_, DATA, length=8, extend=True).__enter__()


def test_overwrite_removes_only_this_projects_outputs(tmp_path):
    run = tmp_path / "run"
    make_run(run, parts=("", "bits_8"))
    os.makedirs(run / "bits_8" / "tb")
    (run / "notes.txt").write_text("mine")
    (run / "bits_8" / "mine.txt").write_text("mine too")
    with driver.RunFolder(str(run), {"lr": 0.5}, DATA, overwrite=True) as folder:
        assert not folder.resumed
    left = sorted(snapshot(run))
    assert left == [".lock", "bits_8/mine.txt", "notes.txt", "run.json"], left
    assert json.loads((run / "run.json").read_text())["settings"] == {"lr": 0.5}


def test_a_new_run_refused_before_its_first_checkpoint_leaves_the_folder_as_it_was(tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    for path in (tmp_path / "new", user):
        before = snapshot(path, with_dirs=True) if path.exists() else None
        with pytest.raises(ConfigError, match="fewer than one batch"):
            with driver.RunFolder(str(path), SETTINGS, DATA, parts=("", "zs")) as folder:
                folder.write_results(str(path), dataset="d", method="m", seed=0, flags=SETTINGS,
                                     metrics={"i2t_map_all": 0.5, "t2i_map_all": 0.4})
                os.makedirs(path / "zs" / "tb")
                raise ConfigError("fewer than one batch")
        assert (snapshot(path, with_dirs=True) if path.exists() else None) == before
    with driver.RunFolder(str(user), {"lr": 0.5}, DATA) as folder:  # the corrected command is a new run
        assert not folder.resumed
    # a run that has saved a checkpoint, or a resumed one, keeps everything
    run = tmp_path / "run"
    with pytest.raises(DataError):
        with driver.RunFolder(str(run), SETTINGS, DATA):
            os.makedirs(run / "checkpoints")
            (run / "checkpoints" / "checkpoint").write_text('model_checkpoint_path: "ckpt-1"\n')
            raise DataError("late")
    with pytest.raises(DataError):
        with driver.RunFolder(str(run), SETTINGS, DATA) as folder:
            assert folder.resumed
            raise DataError("late")
    assert sorted(snapshot(run)) == [".lock", "checkpoints/checkpoint", "run.json"]


def test_overwrite_and_roll_back_remove_only_the_runs_own_files_elsewhere(tmp_path):
    shared = tmp_path / "res"  # e.g. two ZSCRGAN runs given one --res_dir
    shared.mkdir()
    (shared / "acc0.5.pkl").write_text("another run's")
    run = tmp_path / "run"
    with driver.RunFolder(str(run), SETTINGS, DATA, extra_paths=[str(shared)]):
        driver.note_extra_file(str(run), str(shared / "acc0.7.pkl"))
        (shared / "acc0.7.pkl").write_text("mine")
        os.makedirs(run / "checkpoints")
        (run / "checkpoints" / "checkpoint").write_text('model_checkpoint_path: "ckpt-1"\n')
    assert sorted(os.listdir(shared)) == ["acc0.5.pkl", "acc0.7.pkl"]
    with driver.RunFolder(str(run), {"lr": 0.5}, DATA, overwrite=True, extra_paths=[str(shared)]):
        pass
    assert sorted(os.listdir(shared)) == ["acc0.5.pkl"]
    with pytest.raises(DataError):  # stopped before its first checkpoint: its own pickle goes too
        with driver.RunFolder(str(tmp_path / "new"), SETTINGS, DATA, extra_paths=[str(shared)]):
            driver.note_extra_file(str(tmp_path / "new"), str(shared / "acc0.9.pkl"))
            (shared / "acc0.9.pkl").write_text("mine")
            raise DataError("late")
    assert sorted(os.listdir(shared)) == ["acc0.5.pkl"] and not (tmp_path / "new").exists()


def test_outputs_without_run_file_or_a_damaged_one_are_refused(tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    (old / "results.json").write_text("{}")
    with pytest.raises(ConfigError, match="no run.json"):
        driver.RunFolder(str(old), SETTINGS, DATA).__enter__()
    assert sorted(os.listdir(old)) == ["results.json"]
    run = tmp_path / "run"
    make_run(run)
    (run / "run.json").write_text('{"settings": ')
    with pytest.raises(DataError, match=r"run.json: damaged \(cannot read JSON \(") as caught:
        driver.RunFolder(str(run), SETTINGS, DATA).__enter__()
    assert str(caught.value).count("run.json") == 1, caught.value  # the path once
    (run / "run.json").write_text('{"data": {}}')
    with pytest.raises(DataError, match=r"run.json: damaged \(no 'settings' entry\); pass --overwrite"):
        driver.RunFolder(str(run), SETTINGS, DATA).__enter__()
    user = tmp_path / "user"
    user.mkdir()
    (user / "photo.jpg").write_bytes(b"\xff")
    with driver.RunFolder(str(user), SETTINGS, DATA):  # unrelated files are no obstacle, and stay
        pass
    assert (user / "photo.jpg").read_bytes() == b"\xff"


def test_one_writer_per_folder_and_a_dead_holder_never_blocks(tmp_path):
    run = tmp_path / "run"
    holder = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {REPO!r})
        from common import driver
        with driver.RunFolder({str(run)!r}, {SETTINGS!r}, {DATA!r}):
            print("locked", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=rf"being written by another run \(PID {proc.pid}\)"):
            driver.RunFolder(str(run), SETTINGS, DATA).__enter__()
    finally:
        proc.kill()
        proc.wait()
    with driver.RunFolder(str(run), SETTINGS, DATA) as folder:  # the kernel released the dead holder's lock
        assert folder.resumed
        assert (run / ".lock").read_text().strip() == str(os.getpid())


def test_results_carry_provenance_and_files_keep_umask_modes(tmp_path):
    run = tmp_path / "run"
    make_run(run)
    r = json.loads((run / "results.json").read_text())
    p = r["provenance"]
    for key in ("version", "python", "tensorflow", "keras", "numpy", "devices", "command", "started", "ended",
                "wall_seconds", "data", "git_commit"):
        assert key in p, key
    assert p["data"] == DATA and r["warnings"] == []
    mask = os.umask(0)
    os.umask(mask)
    for name in ("results.json", "flags.json", "run.json"):
        assert stat.S_IMODE(os.stat(run / name).st_mode) == 0o666 & ~mask, name
    with pytest.raises(ConfigError, match="lack the contract's metrics"):
        driver.RunFolder(str(tmp_path / "x"), SETTINGS, DATA).write_results(
            str(tmp_path / "x"), dataset="d", method="m", seed=0, flags={}, metrics={"i2t_map_all": 0.5})


@pytest.mark.parametrize("index,message", [
    ('garbage {{{ not a proto', "unreadable checkpoint index"),
    ("", "names no checkpoint"),
    ('model_checkpoint_path: "ckpt-9"\n', "ckpt-9, whose files are missing"),
])
def test_a_damaged_checkpoint_index_is_an_error_not_a_restart(tmp_path, index, message):
    v = tf.Variable(1.0)
    state = training.RunState(str(tmp_path), v=v)
    state.record({"epoch": 0})
    (tmp_path / "checkpoints" / "checkpoint").write_text(index)
    with pytest.raises(DataError, match=message):
        training.RunState(str(tmp_path), v=v)


def test_damaged_history_is_an_error_and_records_after_the_checkpoint_are_dropped(tmp_path):
    v = tf.Variable(1.0)
    state = training.RunState(str(tmp_path), v=v)
    state.record({"epoch": 0})
    state.record({"epoch": 1})
    history = json.loads((tmp_path / "history.json").read_text())
    history["history"].append({"epoch": 2})  # written before a crash that lost its checkpoint
    (tmp_path / "history.json").write_text(json.dumps(history))
    resumed = training.RunState(str(tmp_path), v=v)
    assert resumed.start_epoch == 2 and [r["epoch"] for r in resumed.history] == [0, 1]
    (tmp_path / "history.json").write_text('{"history": [')
    with pytest.raises(DataError, match=r"history.json: damaged \(cannot read JSON \(Expecting value") as caught:
        training.RunState(str(tmp_path), v=v)
    assert str(caught.value).count("history.json") == 1, caught.value
    os.unlink(tmp_path / "history.json")
    with pytest.raises(DataError, match="history.json: missing"):
        training.RunState(str(tmp_path), v=v)


# what TensorFlow 2.21 raised for a checkpoint written to a full tmpfs
TF_FULL_DISK = ("{{{{function_node __wrapped__SaveV2_dtypes_2_device_/job:localhost/replica:0/task:0/device:CPU:0}}}} "
                "{}/ckpt-2_temp/part-00000-of-00001.data-00000-of-00001.tempstate1568; No space left on device "
                "[Op:SaveV2]")


def test_op_errors_are_told_by_file_and_os_reason():
    full = tf.errors.ResourceExhaustedError(None, None, TF_FULL_DISK.format("r/checkpoints"))
    assert op_error_reason(full) == "No space left on device"
    assert op_error_line(full) == "r/checkpoints/ckpt-2: No space left on device"
    other = tf.errors.NotFoundError(None, None, "Failed to find any matching files for x [Op:RestoreV2]")
    assert op_error_line(other) == "Failed to find any matching files for x"


def test_out_of_memory_is_found_in_an_error_chain():
    oom = tf.errors.ResourceExhaustedError(None, None, "{{function_node x}} OOM when allocating tensor with "
                                                       "shape[100,100000000] and type float on /job:localhost")
    try:
        try:
            raise oom
        except tf.errors.ResourceExhaustedError as e:
            raise ValueError("Exception encountered when calling Projector.call()") from e
    except ValueError as wrapped:
        assert tensorflow_oom(wrapped) == "OOM when allocating tensor with shape[100,100000000]"
    assert tensorflow_oom(ValueError("shapes differ")) == ""


@pytest.mark.parametrize("fault", ["full disk", "Ctrl-C"])
def test_a_failed_save_keeps_the_previous_checkpoint_and_leaves_no_temporary_files(tmp_path, monkeypatch, fault):
    v = tf.Variable(1.0)
    state = training.RunState(str(tmp_path), v=v)
    state.record({"epoch": 0})
    before = sorted(os.listdir(tmp_path / "checkpoints"))

    def failing(self, checkpoint_number=None, **kw):
        os.makedirs(os.path.join(self.directory, f"ckpt-{checkpoint_number}_temp"))
        with open(os.path.join(self.directory, f"ckpt-{checkpoint_number}_temp", "part-0"), "wb") as half:
            half.write(b"half")
        if fault == "Ctrl-C":
            raise KeyboardInterrupt
        raise tf.errors.ResourceExhaustedError(None, None, TF_FULL_DISK.format(self.directory))

    monkeypatch.setattr(tf.train.CheckpointManager, "save", failing)
    with pytest.raises(KeyboardInterrupt if fault == "Ctrl-C" else OSError) as raised:
        state.record({"epoch": 1})
    if fault == "full disk":
        assert raised.value.strerror == ("cannot save checkpoint 2 (No space left on device); the previous "
                                         "checkpoint is kept")
    assert sorted(os.listdir(tmp_path / "checkpoints")) == before
    if fault == "full disk":  # the first save of a run has nothing to keep and says so
        first = tmp_path / "first"
        with pytest.raises(OSError, match=r"cannot save checkpoint 1 \(No space left on device\); none was written"):
            training.RunState(str(first), v=v).record({"epoch": 0})
        assert os.listdir(first / "checkpoints") == []
    monkeypatch.undo()
    assert training.RunState(str(tmp_path), v=v).start_epoch == 1


@pytest.mark.parametrize("stop,code,line", [
    ("raise KeyboardInterrupt", 130, "error: interrupted"),
    ("os.kill(os.getpid(), signal.SIGTERM); time.sleep(5)", 143, "error: terminated (SIGTERM)")])
def test_a_stopped_tool_exits_with_one_line_and_no_resume_promise(stop, code, line):
    """Only programs that resume say "re-run the same command to resume"; a tool just stops."""
    script = textwrap.dedent(f"""
        import os, signal, time
        from common import run

        def main(argv):
            {stop}

        run.run_main(main)
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=REPO))
    assert (res.returncode, res.stderr.strip()) == (code, line), res.stderr


@pytest.mark.parametrize("fault,shown", [("raise ImportError('no libcudart')", True),
                                          ("raise KeyboardInterrupt", False)])
def test_import_banners_are_held_back_and_shown_only_when_the_import_fails(tmp_path, fault, shown):
    """The load-time lines TensorFlow writes to fd 2 before its log level applies explain a failed
    import; a Ctrl-C during the import is not a failure and must not print them."""
    fake = tmp_path / "keras"
    fake.mkdir()
    (fake / "__init__.py").write_text(f"import os\nos.write(2, b'load banner\\n')\n{fault}\n")
    script = "from common import run\ntry:\n    run.import_tensorflow()\nexcept BaseException:\n    pass\n"
    env = {k: v for k, v in os.environ.items() if k != "CMR_VERBOSE"}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         env=dict(env, PYTHONPATH=f"{tmp_path}{os.pathsep}{REPO}"))
    assert ("load banner" in res.stderr) is shown, res.stderr


@pytest.mark.parametrize("sig,code,said", [("SIGTERM", 143, "terminated (SIGTERM)"), ("SIGINT", 130, "interrupted")])
def test_a_stop_lets_the_epoch_under_way_end_and_checkpoints_it(tmp_path, sig, code, said):
    """Ctrl-C or SIGTERM during an epoch between evaluations: the epoch ends, is checkpointed, and
    the run stops before the next one (the wait is not lost work)."""
    import signal

    script = textwrap.dedent(f"""
        import sys, time
        import numpy as np
        import tensorflow as tf
        from common import driver, run

        class Slow(driver.Task):
            num_units = 6

            def __init__(self):
                self.v = tf.Variable(0.0)

            def checkpoint_objects(self):
                return {{"v": self.v}}

            def train_unit(self, unit, on_block=None):
                print(f"unit {{unit}}", flush=True)
                time.sleep(1.5)
                self.v.assign_add(1.0)
                return {{"loss": np.array([1.0])}}

            def evaluate_at(self, unit):
                return unit == 0

            def evaluate(self, unit):
                return driver.Evaluation({{"epoch": unit}}, {{}})

        def main(argv):
            driver.fit(Slow(), sys.argv[1], driver.FitOptions(histogram_every=0, checkpoint_seconds=0))

        run.run_main(main, resumes=run.FROM_CHECKPOINT)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=REPO),
                            preexec_fn=as_in_a_terminal)
    while proc.stdout.readline().strip() != "unit 1":
        assert proc.poll() is None
    proc.send_signal(getattr(signal, sig))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err[-1000:]
    lines = err.strip().splitlines()
    assert lines[-1] == f"error: {said}; re-run the same command to resume from the last checkpoint"
    assert lines[-2] == ("stopping at the end of the epoch or cycle under way, which is checkpointed; Ctrl-C again "
                         "stops at once"), err[-1000:]
    assert "unit 2" not in out  # stopped before the next epoch
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-2")  # epoch 1 was kept


def test_a_stop_before_the_first_checkpoint_says_the_run_starts_again(tmp_path):
    script = textwrap.dedent("""
        import sys
        from common import driver, run

        def main(argv):
            with driver.RunFolder(sys.argv[1], {"lr": 0.1}, {"dataset": "d"}):
                open(sys.argv[1] + "/encoders.json", "w").close()
                raise KeyboardInterrupt  # e.g. while the networks are built

        run.run_main(main, resumes=run.FROM_CHECKPOINT)
    """)
    res = subprocess.run([sys.executable, "-c", script, str(tmp_path / "run")], capture_output=True, text=True,
                         timeout=60, env=dict(os.environ, PYTHONPATH=REPO))
    assert res.returncode == 130 and not (tmp_path / "run").exists(), res.stderr
    assert res.stderr.strip() == ("error: interrupted; nothing had been checkpointed yet and the new run's files were "
                                  "removed: re-run the same command to start it again")


def test_a_stop_during_a_long_tensorflow_call_is_acknowledged_at_once_and_a_second_one_stops():
    """Python handles Ctrl-C only when TensorFlow's call returns (a whole compiled epoch): the
    first one is acknowledged at once, the second stops the process without waiting for it."""
    import signal
    import time

    script = textwrap.dedent("""
        import sys
        from common import run

        def main(argv):
            import tensorflow as tf

            @tf.function
            def endless():  # one TensorFlow call far longer than the test
                body = lambda i, x: (i + 1, tf.tanh(x @ x))
                return tf.while_loop(lambda i, x: i < 10**9, body, (0, tf.ones((64, 64))))[1]

            print("calling", flush=True)
            endless()

        run.run_main(main, resumes="from the last checkpoint")
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONPATH=REPO), preexec_fn=as_in_a_terminal)
    assert proc.stdout.readline().strip() == "calling"
    time.sleep(1.0)  # inside the call
    proc.send_signal(signal.SIGINT)
    time.sleep(2.5)
    assert proc.poll() is None  # still in the call, as Python defers the handler
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    lines = err.strip().splitlines()
    assert proc.returncode == 130, err[-1000:]
    assert lines[-2].startswith("stopping when the running TensorFlow call returns"), err[-1000:]
    assert lines[-1] == "error: stopped at once; re-run the same command to resume from the last checkpoint"


def test_a_stop_whose_keyboard_interrupt_was_swallowed_stops_at_the_next_epoch(tmp_path, monkeypatch):
    """A Ctrl-C during a TensorFlow call can come back without a KeyboardInterrupt; the driver
    still stops before the next epoch (after the first epoch's checkpoint)."""
    import signal

    from common import run

    class Counting(driver.Task):
        num_units = 5

        def __init__(self):
            self.v, self.trained = tf.Variable(0.0), []

        def checkpoint_objects(self):
            return {"v": self.v}

        def train_unit(self, unit, on_block=None):
            self.trained.append(unit)
            if unit == 1:
                run._STOP.append(signal.SIGINT)  # as the watcher thread records it
            return {"loss": np.array([1.0])}

        def evaluate(self, unit):
            return driver.Evaluation({"epoch": unit}, {})

    monkeypatch.setattr(run, "_STOP", [])
    task = Counting()
    with pytest.raises(KeyboardInterrupt):
        driver.fit(task, str(tmp_path), driver.FitOptions(histogram_every=0))
    assert task.trained == [0, 1]
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("-2")  # epoch 1 was recorded
    monkeypatch.setattr(run, "_STOP", [signal.SIGTERM])
    with pytest.raises(run.Terminated):
        driver.fit(Counting(), str(tmp_path), driver.FitOptions(histogram_every=0))


def test_the_selected_epochs_model_is_kept_across_resumes_and_restores_by_default(tmp_path, monkeypatch):
    """A task whose results report its best evaluation keeps that epoch's weights after the rolling
    checkpoints dropped them; the first best wins (as the summaries' max does); a run stopped between
    writing a new best and checkpointing its record resumes with the previous choice; one stopped after
    that checkpoint but before naming the choice keeps the restored model (a tie later never would)."""
    import keras

    from common import export, training

    scores = [1.0, 3.0, 2.0, 3.0, 0.5, 0.25, 0.0]

    class Scored(driver.Task):
        num_units, selection = len(scores), "val"

        def __init__(self, fail_at=None):
            self.net = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False)], name="net")
            self.fail_at = fail_at

        def models(self):
            return {"net": self.net}

        def checkpoint_objects(self):
            return {"net": self.net}

        def train_unit(self, unit, on_block=None):
            self.net.layers[0].kernel.assign([[float(unit + 1)]])  # the weight names its epoch
            return {"loss": np.array([1.0])}

        def evaluate(self, unit):
            return driver.Evaluation({"epoch": unit, "val": scores[unit]}, {})

        def selection_score(self, record):
            return record["val"]

        def before_record(self, evaluation, history):
            if evaluation.record["epoch"] == self.fail_at:
                raise KeyboardInterrupt  # after the new best's weights were written, before its record

    ckpts = tmp_path / "checkpoints"
    with pytest.raises(KeyboardInterrupt):
        driver.fit(Scored(fail_at=1), str(tmp_path), driver.FitOptions(histogram_every=0))
    assert training.selected_checkpoint(str(ckpts))["epoch"] == 0  # epoch 1's files are not the choice
    driver.fit(Scored(), str(tmp_path), driver.FitOptions(histogram_every=0))
    chosen = training.selected_checkpoint(str(ckpts))
    assert (chosen["epoch"], chosen["criterion"], chosen["score"]) == (1, "val", 3.0)
    assert sorted(os.listdir(ckpts / "selected")) == ["ckpt-2.data-00000-of-00001", "ckpt-2.index", "selected.json"]
    assert not os.path.exists(ckpts / "ckpt-2.index")  # the rolling checkpoints dropped epoch 1
    probe = Scored().net
    assert export.restore_models(str(tmp_path), net=probe) == str(ckpts / "selected" / "ckpt-2")
    assert float(probe.layers[0].kernel.numpy()[0, 0]) == 2.0
    assert export.restore_models(str(tmp_path), "latest", net=probe).endswith("ckpt-7")
    assert float(probe.layers[0].kernel.numpy()[0, 0]) == 7.0
    late = tmp_path / "late"
    commit = training.SelectedModel.commit

    def stopped(self, epoch, score, name):
        if epoch == 1:
            raise KeyboardInterrupt  # epoch 1's record and checkpoint are written, its choice is not
        commit(self, epoch, score, name)

    monkeypatch.setattr(training.SelectedModel, "commit", stopped)
    with pytest.raises(KeyboardInterrupt):
        driver.fit(Scored(), str(late), driver.FitOptions(histogram_every=0))
    monkeypatch.setattr(training.SelectedModel, "commit", commit)
    assert training.selected_checkpoint(str(late / "checkpoints"))["epoch"] == 0
    driver.fit(Scored(), str(late), driver.FitOptions(histogram_every=0))
    assert training.selected_checkpoint(str(late / "checkpoints"))["epoch"] == 1
    assert export.restore_models(str(late), net=probe).endswith("ckpt-2")
    assert float(probe.layers[0].kernel.numpy()[0, 0]) == 2.0
    (ckpts / "selected" / "selected.json").write_text("{}")  # damaged: an error, never a silent fallback
    with pytest.raises(DataError, match=r"selected.json: damaged \(no 'checkpoint' entry\); `cmr export "
                                        r"--checkpoint latest` still exports"):
        export.restore_models(str(tmp_path), net=probe)


def test_checkpoints_between_evaluations_resume_with_the_intervals_counts(tmp_path, monkeypatch):
    """With evaluations every 3 epochs, `checkpoint_seconds` also checkpoints the epochs between them;
    a run stopped there resumes after the last such epoch, and the next record still counts the
    whole interval (training units, and the task's own count via pending / restore_pending). A stop
    request (Ctrl-C during the epoch) checkpoints that epoch whatever the interval."""
    import signal

    from common import run

    class Sparse(driver.Task):
        num_units = 8

        def __init__(self, stop_in=None, interrupt_in=None):
            self.v, self.trained, self.count = tf.Variable(0.0), [], 0
            self.stop_in, self.interrupt_in = stop_in, interrupt_in

        def checkpoint_objects(self):
            return {"v": self.v}

        def train_unit(self, unit, on_block=None):
            if unit == self.interrupt_in:
                raise KeyboardInterrupt  # killed during this epoch: nothing of it is kept
            if unit == self.stop_in:
                run._STOP.append(signal.SIGINT)  # a Ctrl-C TensorFlow's call swallowed
            self.trained.append(unit)
            self.count += 1
            self.v.assign_add(1.0)
            return {"loss": np.array([float(unit)])}

        def evaluate_at(self, unit):
            return unit % 3 == 0

        def evaluate(self, unit):
            return driver.Evaluation({"epoch": unit, "v": float(self.v.numpy()), "count": self.count}, {})

        def before_record(self, evaluation, history):
            self.count = 0

        def pending(self):
            return {"count": self.count}

        def restore_pending(self, pending):
            self.count = pending.get("count", 0)

    monkeypatch.setattr(run, "_STOP", [])
    every = driver.FitOptions(histogram_every=0, checkpoint_seconds=1e-9)
    with pytest.raises(KeyboardInterrupt):
        driver.fit(Sparse(interrupt_in=5), str(tmp_path / "a"), every)
    assert tf.train.latest_checkpoint(str(tmp_path / "a" / "checkpoints")).endswith("ckpt-5")  # after epoch 4
    resumed = Sparse()
    result = driver.fit(resumed, str(tmp_path / "a"), every)
    assert resumed.trained == [5, 6, 7]
    assert [(r["epoch"], r["train_units"], r["count"], r["v"]) for r in result.history] == [
        (0, 1, 1, 1.0), (3, 3, 3, 4.0), (6, 3, 3, 7.0), (7, 1, 1, 8.0)]
    # without the interval, only evaluations checkpoint, except the epoch a stop request waited for
    with pytest.raises(KeyboardInterrupt):
        driver.fit(Sparse(stop_in=4), str(tmp_path / "b"), driver.FitOptions(histogram_every=0, checkpoint_seconds=0))
    assert tf.train.latest_checkpoint(str(tmp_path / "b" / "checkpoints")).endswith("ckpt-5")
    monkeypatch.setattr(run, "_STOP", [])
    resumed = Sparse()
    result = driver.fit(resumed, str(tmp_path / "b"), driver.FitOptions(histogram_every=0, checkpoint_seconds=0))
    assert resumed.trained == [5, 6, 7] and [r["count"] for r in result.history] == [1, 3, 3, 1]
    with pytest.raises(KeyboardInterrupt):  # and the default (10 minutes) does not checkpoint a fast epoch
        driver.fit(Sparse(interrupt_in=5), str(tmp_path / "c"), driver.FitOptions(histogram_every=0))
    assert tf.train.latest_checkpoint(str(tmp_path / "c" / "checkpoints")).endswith("ckpt-4")


def test_profile_epoch_traces_that_epoch_only(tmp_path, capsys):
    class Squares(driver.Task):
        num_units = 3

        def __init__(self):
            self.v = tf.Variable(1.0)

        def checkpoint_objects(self):
            return {"v": self.v}

        def train_unit(self, unit, on_block=None):
            self.v.assign_add(tf.reduce_sum(tf.square(tf.ones([4]))))
            return {"loss": np.array([float(self.v.numpy())])}

        def evaluate(self, unit):
            return driver.Evaluation({"epoch": unit}, {})

    with pytest.raises(ConfigError, match=r"^--profile_epoch 4 is beyond this run's 3 epochs$"):
        driver.fit(Squares(), str(tmp_path / "a"), driver.FitOptions(histogram_every=0, profile_unit=3))
    driver.fit(Squares(), str(tmp_path / "b"), driver.FitOptions(histogram_every=0, profile_unit=1))
    traces = list((tmp_path / "b" / "tb" / "plugins" / "profile").rglob("*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0
    assert f"profiler trace of epoch 2 in {tmp_path / 'b' / 'tb' / 'plugins' / 'profile'}" in capsys.readouterr().out


def test_divergence_guard_names_the_first_bad_batch_and_losses():
    driver.check_finite({"a": np.array([1.0, 2.0]), "b": np.array([0.0, -1.0])}, "epoch", 0)
    with pytest.raises(DivergenceError, match=r"non-finite b=inf at epoch 4, batch 2; the last good"):
        driver.check_finite({"a": np.array([1.0, 2.0, np.nan]), "b": np.array([0.0, np.inf, 0.0])}, "epoch", 3)
    with pytest.raises(DivergenceError, match=r"non-finite d_loss=nan at cycle 2;"):
        driver.check_finite({"d_loss": float("nan"), "g_loss": 1.0}, "cycle", 1)


def test_progress_is_one_line_per_unit_with_elapsed_eta_and_numbers(capsys):
    p = driver.Progress(4, 1, "epoch", "[zs]")
    p.update(2, {"loss_G": 0.25, "test/unseen/i2t_map_all": 0.5})
    line = capsys.readouterr().out.strip()
    assert line.startswith("[zs] epochs:  50%") and " 2/4 [" in line and "<" in line, line
    assert "loss_G=0.25" in line and "unseen/i2t_map_all=0.5" in line


def test_cmr_lists_every_command_and_refuses_unknown_ones(capsys):
    res = launch.run([sys.executable, "-m", "common.cli", "--help"], capture_output=True, text=True,
                     env=dict(os.environ, PYTHONPATH=REPO))
    assert res.returncode == 0
    for command in ("train acmr", "train jfse", "train zscrgan", "train cmhash", "export", "search", "report",
                    "baseline", "class-vectors", "extract-features", "convert-uci", "benchmark"):
        assert f"cmr {command} " in res.stdout, command
    for args in (["train", "--help"], ["train", "acmr", "-h"], ["search", "--helpfull"], ["export", "--help"]):
        res = launch.run([sys.executable, "-m", "common.cli", *args], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=REPO))
        assert res.returncode == 0 and not res.stderr, (args, res.returncode, res.stderr[-500:])  # absl: status 1
        assert "cmr train acmr" in res.stdout if args == ["train", "--help"] else "  --out" in res.stdout, args
    assert "ACMR entry point" in launch.run([sys.executable, "-m", "common.cli", "train", "acmr", "--help"],
                                            capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO)
                                            ).stdout  # the module's docstring, as under python -m
    res = launch.run([sys.executable, "-m", "common.cli", "--version"], capture_output=True, text=True,
                     env=dict(os.environ, PYTHONPATH=REPO))
    assert res.returncode == 0 and res.stdout.startswith(f"cmr-tf {common.__version__} (Python 3.")
    assert f"tensorflow {tf.__version__}" in res.stdout
    res = launch.run([sys.executable, "-m", "common.cli", "train", "clip"], capture_output=True, text=True,
                     env=dict(os.environ, PYTHONPATH=REPO))
    assert res.returncode == 2 and res.stderr.startswith("error: cmr train: unknown method 'clip'; one of acmr, ")
    from common.cli import main as cmr  # near misses get a suggestion (in process: no TensorFlow is loaded)

    for args, want in ((["trian", "acmr"], "error: unknown command 'trian'; did you mean 'cmr train'?"),
                       (["acmr"], "error: unknown command 'acmr'; did you mean 'cmr train acmr'?"),
                       (["exprot"], "error: unknown command 'exprot'; did you mean 'cmr export'?"),
                       (["train", "jfse-demo"], "error: cmr train: unknown method 'jfse-demo'; one of acmr, jfse, "
                                                "zscrgan, cmhash; did you mean 'cmr train jfse'?"),
                       (["xyz"], "error: unknown command 'xyz'\n")):
        with pytest.raises(SystemExit) as stop:
            cmr(args)
        assert stop.value.code == 2 and capsys.readouterr().err.startswith(want), args
    res = launch.run([sys.executable, "-m", "common.cli"], capture_output=True, text=True,
                     env=dict(os.environ, PYTHONPATH=REPO))
    assert res.returncode == 2 and not res.stdout and res.stderr.startswith("error: a command is missing\n\nusage: cmr")
    res = launch.run([sys.executable, "-m", "common.cli", "train", "acmr", "--flagfile=nope.txt"],
                     capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO))
    assert res.returncode == 2 and res.stderr.startswith("error: Unable to open flagfile"), res.stderr


def test_a_home_path_after_an_equals_sign_is_the_home_folder(tmp_path):
    """`--output_dir=~/runs/x`: the shell does not expand that `~`; a folder named `~` must not appear."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    res = launch.run([sys.executable, "-m", "tools.baseline", "--output_dir=~/runs/cca"], cwd=work,
                     capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO, HOME=str(home)))
    assert res.returncode == 0, res.stderr[-2000:]
    assert (home / "runs" / "cca" / "results.json").exists() and os.listdir(work) == []
    assert f"results in {home / 'runs' / 'cca' / 'results.json'}" in res.stdout
    assert json.loads((home / "runs" / "cca" / "flags.json").read_text())["output_dir"] == str(home / "runs" / "cca")


def test_the_recorded_command_is_the_one_typed(monkeypatch):
    """provenance.command: `cmr train acmr ...` through the console script, `python -m ...` otherwise."""
    monkeypatch.setattr(sys, "argv", ["cmr train acmr", "--epochs", "1", "--output_dir", "my runs/a"])
    assert driver.command_line() == "cmr train acmr --epochs 1 --output_dir 'my runs/a'"
    monkeypatch.setattr(sys, "argv", ["/x/acmr_tf/train.py", "--epochs", "1"])
    assert driver.command_line().endswith(" --epochs 1") and driver.command_line().startswith("python ")


def test_a_run_is_the_same_whichever_way_its_paths_are_written(tmp_path):
    """Paths enter run.json and flags.txt absolute: `--data_dir feat` and `--data_dir <abs>/feat/` are one
    run, and the run's flags.txt re-runs it from any folder (it once started a new run under the new
    folder's relative --output_dir)."""
    from tests.common.fixtures import write_feature_folder

    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    elsewhere.mkdir()
    write_feature_folder(work / "feat")
    env = dict(os.environ, PYTHONPATH=REPO)

    def baseline(*args, cwd):
        return launch.run([sys.executable, "-m", "tools.baseline", *args], cwd=cwd, capture_output=True,
                          text=True, env=env, timeout=300)

    first = baseline("--output_dir", "runs/cca", "--dataset", "features", "--data_dir", "feat", cwd=work)
    assert first.returncode == 0, first.stderr[-2000:]
    flags_txt = (work / "runs" / "cca" / "flags.txt").read_text()
    assert f"--data_dir={work / 'feat'}\n" in flags_txt and f"--output_dir={work / 'runs' / 'cca'}\n" in flags_txt
    again = baseline("--flagfile", str(work / "runs" / "cca" / "flags.txt"), cwd=elsewhere)
    assert again.returncode == 0 and os.listdir(elsewhere) == [], again.stderr[-2000:]
    absolute = baseline("--output_dir", "runs/cca", "--dataset", "features", "--data_dir", f"{work / 'feat'}/",
                        cwd=work)
    assert absolute.returncode == 0, absolute.stderr[-2000:]


def test_a_refusal_shows_a_list_flag_as_it_is_typed():
    assert driver.describe_changes({"bits": ["16"]}, {"bits": ["16", "32"]}, "--") == ["--bits 16 -> 16,32"]
    assert driver.describe_changes({"lr": None}, {"lr": 0.1}, "--") == ["--lr (default) -> 0.1"]


def test_private_folders_of_killed_runs_are_removed_by_the_next_run(tmp_path):
    """A run killed outright (SIGKILL, the OOM killer) leaves its private temporary folder; the next
    run removes it, and only such folders: not a running process's, not one still being created
    (its lock file empty), not folders without the lock file or of other names."""
    import fcntl

    from common import run

    def folder(name, alive=None):
        path = tmp_path / name
        path.mkdir()
        (path / "__autograph_generated_file.py").write_text("x = 1\n")
        if alive is not None:
            (path / run.ALIVE_FILE).write_text(alive)
        return path

    killed = folder("cmr-killed", "4242\n")
    running = folder("cmr-running", "4243\n")
    creating, other, unmarked = folder("cmr-creating", ""), folder("mine", "4244\n"), folder("cmr-tests-x")
    with open(running / run.ALIVE_FILE) as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as its live process holds it
        assert run.remove_stale_tempdirs(str(tmp_path)) == [str(killed)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (running, creating, other, unmarked))
    code = ("import os, sys, tempfile; from common import run; d = run.private_tempdir(); "
            "print(d, flush=True); os.kill(os.getpid(), 9)")
    env = dict(os.environ, PYTHONPATH=REPO, TMPDIR=str(tmp_path))
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    left = res.stdout.strip()
    assert res.returncode == -9 and os.path.isdir(left) and open(os.path.join(left, run.ALIVE_FILE)).read().strip()
    res = subprocess.run([sys.executable, "-c", "from common import run; run.private_tempdir()"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and not os.path.exists(left)  # the next run removed it, then its own at exit
    # "cmr-running"'s lock was released when the `with` block ended, as a dying process's is: stale now
    assert {p.name for p in tmp_path.iterdir()} == {"cmr-creating", "mine", "cmr-tests-x"}


class _Batches(driver.Task):
    """A task that trains batch by batch from a checkpointed tf.data iterator (as cmhash end to end):
    v += the batch's mean, so the weights depend on every batch's data and order."""

    num_units, steps_per_unit, part_way = 3, 5, True

    def __init__(self, stop_at=None, kill_at=None):
        self.v = tf.Variable(0.0)
        self.stop_at, self.kill_at, self.seen = stop_at, kill_at, []
        data = tf.data.Dataset.range(40).map(lambda i: tf.cast(i, tf.float32) ** 2).shuffle(10, seed=3).batch(2)
        self.runner = training.BatchRunner(self.step, data.repeat(), ("x",), ("loss",), self.steps_per_unit)
        self.runner.iterator = iter(data.repeat().map(lambda x: {"x": x}))

    def step(self, x):
        from common import run

        at = (len(self.seen) // 5, len(self.seen) % 5)  # (unit, batch) of a run that trains every batch
        if at == self.kill_at:
            raise KeyboardInterrupt  # killed in this batch: nothing of it is kept
        self.v.assign_add(tf.reduce_mean(x))
        self.seen.append(at)
        if at == self.stop_at:
            run._STOP.append(2)  # a Ctrl-C during this batch
        return {"loss": self.v * 1.0}

    def checkpoint_objects(self):
        return {"v": self.v, "iterator": self.runner.iterator}

    def train_unit(self, unit, on_block=None, **resume):
        if not self.seen:  # a resumed run counts the batches it did not train
            self.seen = [(u, b) for u in range(unit + 1) for b in range(5 if u < unit else resume.get("start", 0))]
        return self.runner.run_epoch(unit, on_block=on_block, **resume)

    def unit_losses(self, values):
        return {"mean": float(np.mean(values["loss"])), "batches": float(len(values["loss"]))}

    def evaluate_at(self, unit):
        return unit != 1

    def evaluate(self, unit):
        return driver.Evaluation({"epoch": unit, "v": float(self.v.numpy())}, {})


def test_a_unit_stopped_part_way_resumes_from_that_batch_and_equals_a_straight_run(tmp_path, monkeypatch, capsys):
    """A task that can (`part_way`: end-to-end hashing, whose epoch can take an hour on a CPU) stops at the
    end of the batch under way: a part-way checkpoint beside the whole-epoch ones (those stay as they
    were), from which the same command continues that epoch; weights, history and unit losses (over
    the whole epoch) then equal an uninterrupted run's, and the part-way checkpoint is gone."""
    from common import run

    opts = driver.FitOptions(histogram_every=0, checkpoint_seconds=0)
    monkeypatch.setattr(run, "_STOP", [])
    straight = driver.fit(_Batches(), str(tmp_path / "a"), opts)

    monkeypatch.setattr(run, "_STOP", [])
    with pytest.raises(KeyboardInterrupt):
        driver.fit(_Batches(stop_at=(1, 2)), str(tmp_path / "b"), opts)
    ckpts = tmp_path / "b" / "checkpoints"
    assert "checkpointed part-way through epoch 2, after batch 3 of 5" in capsys.readouterr().out
    assert tf.train.latest_checkpoint(str(ckpts)).endswith("ckpt-1")  # the whole epochs' checkpoints as they were
    record = json.loads((ckpts / "partial" / "partial.json").read_text())
    assert record["batches"] == 3 and record["after"] == "ckpt-1" and len(record["values"]["loss"]) == 3
    monkeypatch.setattr(run, "_STOP", [])
    with pytest.raises(KeyboardInterrupt):  # stopped in its first epoch: no whole epoch to export
        driver.fit(_Batches(stop_at=(0, 1)), str(tmp_path / "first"), opts)
    from common import export

    with pytest.raises(DataError, match=r"no whole epoch checkpointed yet, only the part-way checkpoint that "
                                        r".*partial.json names; resume the run"):
        export.restore_models(str(tmp_path / "first"), v=keras.layers.Dense(1))
    capsys.readouterr()
    before = snapshot(ckpts)
    monkeypatch.setattr(run, "_STOP", [])
    resumed = _Batches()
    result = driver.fit(resumed, str(tmp_path / "b"), dataclasses.replace(opts, inner_progress_seconds=1e-9))
    out = capsys.readouterr().out
    assert "resumed in epoch 2 of 3, after batch 3 of 5" in out
    inner = [line for line in out.splitlines() if "batch/s" in line or "s/batch" in line]
    assert [line.split(":")[0] for line in inner] == ["epoch 2", "epoch 3", "epoch 3", "epoch 3", "epoch 3"], out
    assert "4/5" in inner[0] and "1/5" in inner[1]  # within a unit, as its batches end (the last one: its own line)
    assert resumed.seen[8:] == [(1, 3), (1, 4), (2, 0), (2, 1), (2, 2), (2, 3), (2, 4)]  # batches 4, 5 of epoch 2 on
    assert float(resumed.v.numpy()) == float(straight_v(tmp_path / "a"))
    assert [dict(r, train_seconds=0) for r in result.history] == [dict(r, train_seconds=0) for r in straight.history]
    assert not (ckpts / "partial").exists()  # superseded by the checkpoint after that epoch
    assert snapshot(ckpts) != before


def straight_v(folder):
    return json.loads((folder / "history.json").read_text())["history"][-1]["v"]


def test_part_way_checkpoints_on_the_timer_survive_a_kill_and_never_outlive_a_later_epoch(tmp_path, monkeypatch):
    """`checkpoint_seconds` also checkpoints between batches of such a task, so a kill (here at the
    fourth batch of epoch 2) loses at most that interval; a part-way checkpoint older than the
    latest whole-epoch one is ignored; a damaged partial.json is an error naming it."""
    from common import run

    monkeypatch.setattr(run, "_STOP", [])
    plain = driver.FitOptions(histogram_every=0, checkpoint_seconds=0)
    straight = driver.fit(_Batches(), str(tmp_path / "a"), plain)
    timed = driver.FitOptions(histogram_every=0, checkpoint_seconds=1e-9)
    with pytest.raises(KeyboardInterrupt):
        driver.fit(_Batches(kill_at=(1, 3)), str(tmp_path / "b"), timed)
    partial = tmp_path / "b" / "checkpoints" / "partial"
    assert json.loads((partial / "partial.json").read_text())["batches"] == 3  # after the third batch
    assert sorted(os.listdir(partial)) == ["ckpt-1-3.data-00000-of-00001", "ckpt-1-3.index", "partial.json"]
    resumed = _Batches()
    result = driver.fit(resumed, str(tmp_path / "b"), timed)
    assert resumed.seen[8] == (1, 3) and float(resumed.v.numpy()) == straight_v(tmp_path / "a")
    assert [r["v"] for r in result.history] == [r["v"] for r in straight.history]
    assert not partial.exists()

    with pytest.raises(KeyboardInterrupt):  # a part-way checkpoint made stale by a later whole epoch's
        driver.fit(_Batches(kill_at=(1, 3)), str(tmp_path / "c"), timed)
    stale = (tmp_path / "c" / "checkpoints" / "partial" / "partial.json")
    stale.write_text(stale.read_text().replace('"ckpt-1"', '"ckpt-0"'))
    state = training.RunState(str(tmp_path / "c"), v=tf.Variable(0.0), iterator=_Batches().runner.iterator)
    assert state.partial is None and state.start_epoch == 1
    stale.write_text("{")
    with pytest.raises(DataError, match=r"partial.json: damaged .*remove .*partial to resume from the last whole "
                                        r"epoch, or pass --overwrite"):
        training.RunState(str(tmp_path / "c"), v=tf.Variable(0.0), iterator=_Batches().runner.iterator)
