"""The run contract, for each of the four methods' entry points (issue 16): what a rerun does,
one writer per folder, damaged state, the TensorBoard layout, provenance and a quiet stderr."""

import fcntl
import json
import os
import re
import subprocess
import sys

import pytest
import tensorflow as tf

from tests import launch
from tests.common import fixtures
from tests.common.fixtures import snapshot
from tests.conftest import noise, user_env

# (id, module, tiny args, the part holding tb/ and checkpoints/, a result-affecting change, test/ tag)
METHODS = [
    ("acmr", "acmr_tf.train", ["--epochs", "2", "--nojit_compile"], "", ["--lr", "0.01"], "test/i2t_map_at_50"),
    ("jfse", "jfse_tf.train", ["--scenario", "zs", "--epochs", "2", "--hidden", "32", "--noise_dim", "4",
                               "--n_critic", "1", "--eval_every", "1", "--nojit_compile"], "zs",
     ["--align", "cmca"], "test/unseen/i2t_map_all"),
    ("zscrgan", "zscrgan_tf.train", ["--dataset", "synthetic:small", "--gf_dim", "8", "--df_dim", "8", "--embed_dim",
                                     "4", "--z_dim", "2", "--e_iters", "2", "--m_iters", "2", "--n_critic", "1",
                                     "--max_cycles", "2"], "", ["--kl_form", "standard"], "test/p50"),
    ("cmhash", "cmhash_tf.train", ["--epochs", "2", "--bits", "8", "--eval_every", "1", "--nojit_compile"], "bits_8",
     ["--margin", "5"], "test/i2t_map"),
]


def tags(logdir):
    """{tag: plugin} of every summary in a TensorBoard log folder."""
    out = {}
    for name in os.listdir(logdir):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(logdir, name)):
            for v in event.summary.value:
                out[v.tag] = v.metadata.plugin_data.plugin_name or "scalars"
    return out


@pytest.mark.parametrize("method", METHODS, ids=[m[0] for m in METHODS])
def test_run_contract(tmp_path, method):
    name, module, args, part, change, test_tag = method
    out = tmp_path / "run"
    env = user_env()

    def cli(*extra, fresh=False):
        cmd = [sys.executable, "-m", module, *args, "--output_dir", str(out), "--res_dir", str(tmp_path / "res"),
               *extra]
        if name != "zscrgan":
            cmd.remove("--res_dir")
            cmd.remove(str(tmp_path / "res"))
        # the first run is a fresh process: TensorFlow's import is part of what must stay quiet
        return (subprocess.run if fresh else launch.run)(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                                                         timeout=600)

    first = cli("--overwrite", fresh=True)  # on a new folder: nothing to replace, but it must not enter flags.txt
    assert first.returncode == 0, first.stderr[-2000:]
    assert not noise(first.stderr), noise(first.stderr)[:5]
    folder = out / part if part else out
    results = json.loads(((out / "zs") if name == "jfse" else out).joinpath("results.json").read_text())
    for key in ("version", "git_commit", "python", "tensorflow", "keras", "numpy", "devices", "command", "started",
                "ended", "wall_seconds", "data"):
        assert key in results["provenance"], key
    assert results["provenance"]["command"].startswith(f"python -m {module} ")
    seen = tags(folder / "tb")
    assert any(t.startswith("loss/") for t in seen) and test_tag in seen, sorted(seen)
    assert any(p == "histograms" and t.startswith("weights/") for t, p in seen.items())
    assert not [t for t in seen if re.match(r"weights/([^/]+)/\1/", t)]  # weights/<model>/<layer>/<variable>
    assert any(p == "pr_curves" and t.startswith("pr/") for t, p in seen.items())
    assert seen.get("_hparams_/session_start_info") == "hparams" and any(t.startswith("final/") for t in seen)

    before = snapshot(out)
    refused = cli(*change)  # a result-affecting change: refused, nothing touched
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert refused.returncode == 2 and len(errors) == 1 and "Traceback" not in refused.stderr, refused.stderr[-1500:]
    assert f"{change[0]} " in errors[0] and "other settings" in errors[0]
    assert snapshot(out) == before

    # the console script (`cmr train <method>`), fed the run's own flags.txt plus a pure logging
    # flag: the same run, so it resumes (complete: nothing is trained or rewritten); never --overwrite
    flagfile = out / "flags.txt"
    assert "overwrite" not in flagfile.read_text() and f"--output_dir={out}" in flagfile.read_text()
    assert flagfile.read_text().startswith(f"# flags of {'an' if name == 'acmr' else 'a'} {module} run")  # absl skips '#' lines; it names its program
    logging_only = launch.run([sys.executable, "-m", "common.cli", "train", name, f"--flagfile={flagfile}",
                               "--histogram_every", "0"], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)
    assert logging_only.returncode == 0 and "already complete" in logging_only.stdout, logging_only.stderr[-1500:]
    assert snapshot(out)["results.json" if name != "jfse" else "zs/results.json"] == \
        before["results.json" if name != "jfse" else "zs/results.json"]

    # a longer schedule: refused as another run, with the way to continue it named; with --extend the
    # run trains on from its last checkpoint, as a run started with that length would have (ACMR's and
    # JFSE's adversarial schedules depend on the length: refused)
    longer = ["--max_cycles", "3"] if name == "zscrgan" else ["--epochs", "3"]
    before = snapshot(out)
    refused = cli(*longer)
    assert refused.returncode == 2, refused.stderr[-1500:]
    if name in ("acmr", "jfse"):
        assert "pass --extend" not in refused.stderr
        refused = cli(*longer, "--extend")
        assert refused.returncode == 2 and "--extend cannot lengthen this run: " in refused.stderr, \
            refused.stderr[-1500:]
        assert "gradient-reversal weight follows a schedule over --epochs" in refused.stderr
        assert snapshot(out) == before
        longer = []
    else:
        assert "To continue it to 3 " in refused.stderr and "pass --extend" in refused.stderr
        assert snapshot(out) == before
        extended = cli(*longer, "--extend")
        assert extended.returncode == 0 and f"extending the run in {out} from 2 to 3" in extended.stdout, \
            extended.stderr[-1500:]
        results_dir = (out / "zs") if name == "jfse" else out
        results = json.loads((results_dir / "results.json").read_text())
        assert [(e["from"], e["to"]) for e in results["provenance"]["extensions"]] == [(2, 3)]
        history = json.loads((folder / "history.json").read_text())["history"]
        assert [r["epoch"] for r in history] == [0, 1, 2]
        own = ["--res_dir", str(tmp_path / "res_s")] if name == "zscrgan" else []
        straight = launch.run([sys.executable, "-m", module, *args, *longer, "--output_dir", str(tmp_path / "s"),
                               *own], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert straight.returncode == 0, straight.stderr[-1500:]
        plain = json.loads((tmp_path / "s" / part / "history.json").read_text())["history"]
        timing = ("train_seconds",)  # every epoch (cycle) is evaluated here: the same records otherwise
        assert [{k: v for k, v in r.items() if k not in timing} for r in history] == \
            [{k: v for k, v in r.items() if k not in timing} for r in plain]
        # TensorBoard's HParams view shows the extended run with its new length, once
        hparams = fixtures.recorded_hparams(folder / "tb")
        assert hparams == fixtures.recorded_hparams(tmp_path / "s" / part / "tb"), hparams
        assert len(hparams) == 1 and hparams[0]["max_cycles" if name == "zscrgan" else "epochs"] == 3, hparams

    with open(out / ".lock", "a+") as held:  # another process is writing the folder
        fcntl.flock(held, fcntl.LOCK_EX)
        busy = cli(*longer)  # the run's command now
        fcntl.flock(held, fcntl.LOCK_UN)
    assert busy.returncode == 2 and "being written by another run" in busy.stderr, busy.stderr[-1500:]

    (folder / "checkpoints" / "checkpoint").write_text("garbled {{{")
    damaged = cli(*longer)
    assert damaged.returncode == 2 and "unreadable checkpoint index" in damaged.stderr, damaged.stderr[-1500:]
    assert "Traceback" not in damaged.stderr
