"""tf.distribute: 1 vs 2 replicas give the same losses and gradients; chief-only writing."""

import json
import os
import re
import sys
import types

import numpy as np
import pytest
import tensorflow as tf

from common import distribute, run, training
from tests import launch
from common.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("methods", [("acmr_simple", "acmr_triplet", "cmhash"), ("jfse",), ("zscrgan",)])
def test_one_vs_two_replicas_same_losses_and_gradients(methods):
    """Every method's step on two logical CPUs (9-row batch split 4 + 5) against one device:
    SGD makes the update a multiple of the gradient, so gradients are compared exactly.
    (Three processes, so that the suite's workers share the tracing time.)"""
    out = launch.run([sys.executable, "-m", "tests.common.replica_check", *methods], cwd=ROOT,
                     capture_output=True, text=True, timeout=600)
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert out.returncode == 0, out.stderr[-3000:]
    assert tuple(r["method"] for r in rows) == methods
    for r in rows:
        assert r["replicas"] == 2
        # JFSE and cmhash through the in-graph epoch (two steps in one tf.function), the others one step
        label = "epoch" if r["method"] in ("jfse", "cmhash") else "gradient"
        assert r[f"{label}_update_rel"] < 1e-4 and r[f"{label}_loss_rel"] < 1e-4, r
        # most variables move (an R-fold gradient error or a dropped branch would show above)
        assert r["moved"] >= r["variables"] - 2, r


def test_helpers_are_identity_without_strategy():
    x = tf.constant(np.arange(12.0).reshape(4, 3), tf.float32)
    assert distribute.local_rows(x) is x
    assert distribute.gather_rows(x) is x
    np.testing.assert_array_equal(distribute.per_row(lambda a: a * 2, x).numpy(), x.numpy() * 2)
    assert distribute.replica_share(x) is x
    assert distribute.Replicas().num == 1 and distribute.Replicas().is_chief


def _replicas(task_type, task_id, cluster):
    resolver = types.SimpleNamespace(task_type=task_type, task_id=task_id,
                                     cluster_spec=lambda: types.SimpleNamespace(as_dict=lambda: cluster))
    return distribute.Replicas(types.SimpleNamespace(cluster_resolver=resolver, num_replicas_in_sync=4))


def test_chief_selection():
    workers = {"worker": ["a:1", "b:1"]}
    with_chief = {"chief": ["c:1"], "worker": ["a:1", "b:1"]}
    assert _replicas("worker", 0, workers).is_chief
    assert not _replicas("worker", 1, workers).is_chief
    assert _replicas("chief", 0, with_chief).is_chief
    assert not _replicas("worker", 0, with_chief).is_chief


def test_non_chief_restores_the_chief_checkpoint_but_writes_elsewhere(tmp_path):
    out = str(tmp_path / "run")
    v = tf.Variable(1.0)
    chief = training.RunState(out, v=v)
    v.assign(5.0)
    chief.record({"epoch": 0})
    listing = sorted(os.listdir(out))
    v.assign(0.0)
    worker = training.RunState(out, replicas=_replicas("worker", 1, {"worker": ["a:1", "b:1"]}), v=v)
    assert worker.resumed and float(v.numpy()) == 5.0 and worker.start_epoch == 1
    worker.record({"epoch": 1})
    assert sorted(os.listdir(out)) == listing
    with open(os.path.join(out, "history.json")) as f:
        assert json.load(f)["history"] == [{"epoch": 0}]
    assert tf.train.latest_checkpoint(os.path.join(out, "checkpoints")).endswith("-1")


def test_multiworker_needs_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="TF_CONFIG"):
        distribute.make_strategy("multiworker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        distribute.make_strategy("multiworker")
    workers = {"worker": ["localhost:1", "localhost:2"]}
    for config, message in [
            ([1], "must be a JSON object"),
            ({"cluster": {"worker": "localhost:1"}, "task": {"type": "worker", "index": 0}}, 'list of "host:port"'),
            ({"cluster": workers}, 'must name a job of the cluster \\(worker\\)'),
            ({"cluster": workers, "task": {"type": "chief", "index": 0}}, "must name a job"),
            ({"cluster": workers, "task": {"type": "worker", "index": 5}}, r"task index 5 is not one of the 2 "
                                                                           r'"worker" machines \(0..1\)'),
            ({"cluster": workers, "task": {"type": "worker", "index": "0"}}, "task index '0'")]:
        monkeypatch.setenv("TF_CONFIG", json.dumps(config))
        with pytest.raises(ConfigError, match=message):  # TensorFlow's own check is a traceback
            distribute.make_strategy("multiworker")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": workers, "task": {"type": "worker", "index": 1}}))
    assert run.tf_config() == ({"type": "worker", "index": 1}, workers)


@pytest.mark.parametrize("module,args,results", [
    ("acmr_tf.train", ["--epochs", "1"], "results.json"),
    ("jfse_tf.train", ["--epochs", "1", "--hidden", "16", "--noise_dim", "4", "--scenario", "zs"], "zs/results.json"),
    ("zscrgan_tf.train", ["--dataset", "synthetic:small", "--max_cycles", "1", "--gf_dim", "8", "--df_dim", "8",
                          "--embed_dim", "4", "--z_dim", "2", "--e_iters", "1", "--m_iters", "1"], "results.json"),
    ("cmhash_tf.train", ["--epochs", "1", "--bits", "8"], "results.json"),  # its no-triplet cond broke here once
], ids=["acmr", "jfse", "zscrgan", "cmhash"])
def test_cli_trains_under_mirrored_strategy(tmp_path, module, args, results):
    """Every entry point's --distribute path (one CPU replica here): scope, step, checkpoint, results."""
    out = tmp_path / "run"
    r = launch.run([sys.executable, "-m", module, *args, "--distribute", "mirrored", "--output_dir", str(out)],
                   cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    with open(out / results) as f:
        res = json.load(f)
    assert res["flags"]["distribute"] == "mirrored"
    assert re.search(r"^--distribute mirrored: \d+ replicas? on [A-Z]+:\d", r.stdout, re.M), r.stdout  # said
    key = "t2i_map_all" if module.startswith("zscrgan") else "i2t_map_all"
    assert 0 < res["metrics"][key] <= 1
