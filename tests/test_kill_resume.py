"""Kill and resume (issue 8): SIGKILL a training process after its first checkpoint, run the same
command again (from the run's own flags.txt), and finish with the metrics and model weights of an uninterrupted run.
ACMR runs the default path (in-graph epochs, XLA step); JFSE and cmhash the in-graph epochs
without XLA (XLA compilation in every process would push the suite past its time budget), JFSE
with a batch size that divides its 200 training pairs (a partial batch is one more trace per process;
cmhash's runs have one)."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from common import training
from tests import launch
from tests.common import fixtures
from tests.conftest import REPO

# (id, module, args, checkpoint folder and results.json folder relative to the output folder, metrics)
METHODS = [
    ("acmr", "acmr_tf.train", ["--epochs", "8", "--preset", "paper"], "checkpoints", "",
     ["i2t_map_all", "t2i_map_all", "i2t_map_at_50"]),
    ("jfse", "jfse_tf.demo", ["--scenario", "zs", "--synthesize_unseen", "--epochs", "3", "--hidden", "64",
                              "--noise_dim", "8", "--n_critic", "1", "--eval_every", "1", "--nojit_compile",
                              "--batch_size", "40"],
     "zs/checkpoints", "zs",
     ["i2t_map_all", "t2i_map_all"]),
    ("zscrgan", "zscrgan_tf.run_exp", ["--dataset", "synthetic:small", "--gf_dim", "16", "--df_dim", "16",
                                       "--embed_dim", "8", "--z_dim", "4", "--e_iters", "20", "--m_iters", "20",
                                       "--n_critic", "2", "--max_cycles", "6", "--eval_mode", "mean"],
     "checkpoints", "", ["p50_best", "p50_last", "t2i_map_all"]),
    ("cmhash", "cmhash_tf.train", ["--epochs", "12", "--eval_every", "1", "--bits", "16", "--nojit_compile"],
     "bits_16/checkpoints", "",
     ["i2t_map_all", "t2i_map_all"]),
    # checkpoints between evaluations (--checkpoint_minutes): a resume from one equals the straight run
    ("cmhash-between", "cmhash_tf.train", ["--epochs", "12", "--eval_every", "5", "--bits", "16", "--nojit_compile",
                                           "--checkpoint_minutes", "0.000001"], "bits_16/checkpoints", "",
     ["i2t_map_all", "t2i_map_all"]),
    # issue 20: resuming a mixed_bfloat16 run equals a straight mixed_bfloat16 run
    ("acmr-bf16", "acmr_tf.train", ["--epochs", "8", "--preset", "paper", "--precision", "mixed_bfloat16",
                                    "--nojit_compile"], "checkpoints", "", ["i2t_map_all", "t2i_map_all"]),
]


def _cmd(module, args, out):
    return [sys.executable, "-m", module, *args, "--output_dir", str(out), "--seed", "3"]


def _weights(ckpt_dir, path=None):
    """Every model variable of the latest checkpoint (or of `path`: the per-model indexes), by name."""
    path = path or tf.train.latest_checkpoint(str(ckpt_dir))
    reader = tf.train.load_checkpoint(path)
    names = [n for n, _ in tf.train.list_variables(path) if "__variables" in n]
    assert names
    return {n: reader.get_tensor(n) for n in names}


@pytest.mark.parametrize("method", METHODS, ids=[m[0] for m in METHODS])
def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, method):
    name, module, args, ckpt_rel, res_rel, keys = method
    # the children's temporary files go to the test's folder: the killed one cannot remove its own,
    # the next run does
    (tmp_path / "tmp").mkdir()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO, TMPDIR=str(tmp_path / "tmp"))
    straight = launch.run(_cmd(module, args, tmp_path / "a"), cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-2000:]
    ckpt = tmp_path / "b" / ckpt_rel
    proc = launch.Popen(_cmd(module, args, tmp_path / "b"), cwd=tmp_path, env=env,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (ckpt / "checkpoint").exists():
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # the killed run's flags.txt (written when the run was accepted) is the whole command
    resumed = launch.run([sys.executable, "-m", module, "--flagfile", str(tmp_path / "b" / "flags.txt")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed after" in resumed.stdout + resumed.stderr
    assert not os.listdir(tmp_path / "tmp")  # the killed run's private folder went with the resume's start
    ra, rb = (json.loads((tmp_path / d / res_rel / "results.json").read_text()) for d in "ab")
    wa, wb = _weights(tmp_path / "a" / ckpt_rel), _weights(tmp_path / "b" / ckpt_rel)
    assert wa.keys() == wb.keys()
    if name == "jfse":  # a fresh JFSE process may round one reduction differently (1 ulp seen on CI)
        for k in keys:
            assert ra[k] == pytest.approx(rb[k], rel=1e-6), k
        for n in wa:
            np.testing.assert_allclose(wb[n], wa[n], rtol=1e-5, atol=1e-6, err_msg=n)
    else:
        assert [ra[k] for k in keys] == [rb[k] for k in keys]
        assert all(np.array_equal(wa[n], wb[n]) for n in wa)
    if name.startswith("cmhash") or name == "zscrgan":  # the selected model (what the export takes) is the same too
        sa, sb = (training.selected_checkpoint(str(tmp_path / d / ckpt_rel)) for d in "ab")
        want = (ra["p50_best_cycle"] - 1 if name == "zscrgan" else ra["metrics"]["per_bits"]["16"]["selected"]["epoch"])
        assert sa["epoch"] == sb["epoch"] == want
        wa, wb = _weights(None, sa["path"]), _weights(None, sb["path"])
        assert wa.keys() == wb.keys() and all(np.array_equal(wa[n], wb[n]) for n in wa)
    # TensorBoard: the resumed run holds each summary once, the same ones as the uninterrupted run
    logged = [fixtures.summary_steps(tmp_path / d / os.path.dirname(ckpt_rel) / "tb") for d in "ab"]
    assert len(logged[1]) == len(set(logged[1])) and set(logged[1]) == set(logged[0])
