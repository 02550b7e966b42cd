"""ZSCRGAN system tests (spec zscrgan.md §10): learning on synthetic zero-shot data, the results
pickles, seeded reproducibility, exact resume, and the release-compatible entry point."""

import json
import os
import pickle
import sys

import numpy as np
import pytest
import tensorflow as tf

from common import training
from common.synthetic import make_synthetic
from tests import launch
from tests.common import fixtures
from tests.conftest import REPO
from zscrgan_tf import data as zdata
from zscrgan_tf.config import ZSCRGANConfig
from zscrgan_tf.task import ZSCRGANTrainer
from zscrgan_tf.task import fit as train

SMALL = dict(gf_dim=256, df_dim=256, embed_dim=128, z_dim=32, e_iters=50, m_iters=50)


def _synthetic(seed=0):
    ds = make_synthetic("small", seed=seed, num_classes=20, train_per_class=40, test_per_class=20,
                        image_dim=128, text_dim=64, emb_dim=32)
    return zdata.from_dataset(ds)


def test_learns_zero_shot_retrieval_on_synthetic_data():
    data = _synthetic()
    training.set_seed(0)
    trainer = ZSCRGANTrainer(ZSCRGANConfig(**SMALL), data)
    untrained = trainer.evaluate(data.test)["p50"]
    seen_labels = set()
    next_batch = trainer.sampler.next_batch

    def spy():
        out = next_batch()
        seen_labels.update(out[3][out[2] > 0].tolist())
        return out

    trainer.sampler.next_batch = spy
    p50 = []
    for _ in range(12):
        trainer.cycle()
        p50.append(trainer.evaluate(data.test)["p50"])
    chance = data.test.chance_p_at_k
    assert chance == pytest.approx(0.1)
    assert max(p50) >= 2 * chance, p50
    assert p50[-1] > untrained + 0.05, (untrained, p50)
    assert seen_labels == set(data.trainids)  # every seen class trained, no unseen class ever sampled
    assert not seen_labels & set(data.test.query_labels.tolist())


TINY = dict(batch_size=4, gf_dim=16, df_dim=16, embed_dim=8, z_dim=4, e_iters=3, m_iters=2, n_critic=2)


def _run(tmp_path, name, cycles, seed=1):
    training.set_seed(seed)
    ds = make_synthetic("small", seed=0)
    data = zdata.from_dataset(ds, val_classes=2, seed=0)
    out = tmp_path / name
    summary = train(ZSCRGANConfig(seed=seed, **TINY), data, str(out), str(out / "res"), cycles)
    history = json.load(open(out / "history.json"))["history"]
    for record in history:  # wall-clock time is the one thing a seed does not fix
        assert record.pop("train_seconds") > 0
    return summary, history, out


def test_seed_resume_and_results_pickles(tmp_path):
    s1, h1, out1 = _run(tmp_path, "a", 4)
    _, h2, _ = _run(tmp_path, "b", 4)
    assert h1 == h2  # same seed, same losses and metrics
    _, h3, _ = _run(tmp_path, "c", 4, seed=2)
    assert h3 != h1
    _run(tmp_path, "d", 2)
    s4, h4, out4 = _run(tmp_path, "d", 4)  # resumes after cycle 2: same sampler position and noise stream
    assert h4 == h1 and s4["p50_best"] == s1["p50_best"]
    # one pickle per improvement of the best test P@50, named like the release, as it stored them
    p50 = [r["test"]["p50"] for r in h1]
    improvements = [p for i, p in enumerate(p50) if p > max([0.0] + p50[:i])]
    names = sorted(os.listdir(out1 / "res"))
    assert names == sorted(f"acc{p:.12g}.pkl" for p in improvements)
    best = pickle.load(open(out1 / "res" / f"acc{max(p50):.12g}.pkl", "rb"))
    data = zdata.from_dataset(make_synthetic("small", seed=0), val_classes=2, seed=0)
    assert len(best) == len(data.test.queries)
    assert [next(iter(d)) for d in best] == data.test.query_labels.tolist()
    assert all(len(next(iter(d.values()))) == 50 for d in best)
    hits = {}
    for d in best:  # recompute the macro P@50 from the stored ids
        (c, ids), = d.items()
        hits.setdefault(c, []).append(np.mean(np.asarray(ids) == c))
    assert np.mean([np.mean(v) for v in hits.values()]) == pytest.approx(max(p50))
    assert s1["p50_best"] == max(p50) and s1["p50_last"] == p50[-1]
    assert s1["p50_val_selected"] in p50 and 0 <= s1["p50_untrained"] <= 1
    # the model of the validation-selected cycle is kept for the export, the same after the resume
    kept = [training.selected_checkpoint(str(out / "checkpoints")) for out in (out1, out4)]
    assert [(k["epoch"], k["criterion"], k["name"]) for k in kept] == 2 * [
        (s1["p50_val_selected_cycle"] - 1, "val", f"cycle {s1['p50_val_selected_cycle']}")]
    stored = [tf.train.load_checkpoint(k["path"]) for k in kept]
    names = [n for n, _ in tf.train.list_variables(kept[0]["path"]) if "CSEM_net__variables" in n]
    assert names and all(np.array_equal(stored[0].get_tensor(n), stored[1].get_tensor(n)) for n in names)
    assert not [f for f in os.listdir(out1 / "res") if f.startswith(".tmp")]


def _cli(args, cwd):
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    return launch.run([sys.executable, "-m", "zscrgan_tf.run_exp", *args], cwd=cwd, env=env,
                      capture_output=True, text=True, timeout=300)


def test_cli_release_flags_folders_and_outputs(tmp_path):
    fixtures.write_zscrgan(tmp_path / "datasets" / "CUB")
    r = _cli(["--dataset", "CUB", "--e_iters", "1", "--m_iters", "1", "--n_critic", "1", "--max_cycles", "1"],
             tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "New best Prec@50" in r.stdout
    logs = tmp_path / "ckt_logs" / "CUB_logs"
    args = (logs / "args.txt").read_text()
    for item in ("batch_size=32", "gf_dim=2048", "df_dim=1024", "embed_dim=1024", "CSEM_lr=0.002",
                 "generator_lr=0.0002", "discriminator_lr=0.0002", "epochs=5000", "kl_div_coefficient=1.0",
                 "mm_reg_coeff=2.0", "z_dim=256", "clip_val=0.01", "dataset='CUB'"):
        assert item in args, item
    assert any(f.startswith("events") for f in os.listdir(logs / "tb"))
    assert os.path.exists(logs / "checkpoints" / "checkpoint")
    results = json.load(open(logs / "results.json"))
    assert results["method"] == "zscrgan" and results["cycles"] == 1 and results["cycles_planned"] == 1
    assert {"p50_best", "p50_last", "t2i_map_all"} <= set(results)
    # chance levels of that gallery (below): P@50 = mean class share (3/5 + 2/5) / 2; mAP@all = mean over the
    # queries of E[AP] = (H_5 + (R - 1)(5 - H_5) / 4) / 5 with R = 3, 3, 2, 2 relevant images
    h5 = 1 + 1 / 2 + 1 / 3 + 1 / 4 + 1 / 5
    ap = lambda r: (h5 + (r - 1) * (5 - h5) / 4) / 5  # noqa: E731
    assert results["p50_chance"] == pytest.approx(0.5)
    assert results["chance_map_all"] == pytest.approx((ap(3) + ap(2)) / 2)
    assert f"(chance {(ap(3) + ap(2)) / 2:.4f})" in r.stdout
    (pkl,) = os.listdir(tmp_path / "retrieved_res" / "CUB_res")
    assert pkl == f"acc{results['p50_best']:.12g}.pkl"
    retrieved = pickle.load(open(tmp_path / "retrieved_res" / "CUB_res" / pkl, "rb"))
    # fixture: unseen classes 1 (2 texts, 3 images) and 3 (2 texts, 2 images); gallery of 5 < K
    assert [next(iter(d)) for d in retrieved] == [1, 1, 3, 3]
    assert all(sorted(next(iter(d.values()))) == [1, 1, 1, 3, 3] for d in retrieved)


def test_cli_reads_other_paired_formats_with_unseen_classes(tmp_path):
    """`--dataset xmn --data_dir DIR` is JFSE's release format, read as such (it once looked for ZSCRGAN
    pickles in DIR); a format without unseen classes is refused by name."""
    fixtures.write_xmn(tmp_path / "xmn")
    fixtures.write_wikipedia(tmp_path / "wiki")
    tiny = ["--gf_dim", "8", "--df_dim", "8", "--embed_dim", "4", "--z_dim", "2", "--e_iters", "1", "--m_iters", "1",
            "--n_critic", "1", "--batch_size", "2", "--max_cycles", "1"]
    r = _cli(["--dataset", "xmn", "--data_dir", str(tmp_path / "xmn"), "--output_dir", str(tmp_path / "r"), *tiny],
             tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    results = json.load(open(tmp_path / "r" / "results.json"))
    assert results["dataset"] == "xmn" and results["cycles"] == 1
    r = _cli(["--dataset", "wikipedia", "--data_dir", str(tmp_path / "wiki"), "--output_dir", str(tmp_path / "w"),
              *tiny], tmp_path)
    assert r.returncode == 2 and "zero-shot needs unseen classes" in r.stderr and "Traceback" not in r.stderr


def test_cli_missing_files_and_bad_flags(tmp_path):
    r = _cli(["--dataset", "CUB"], tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "txt_embed_dict.pkl" in r.stderr and os.path.join("datasets", "CUB") in r.stderr
    r = _cli([], tmp_path)  # the release's default data set, absent on a fresh machine: say how to run anyway
    assert r.returncode == 2 and r.stderr.strip() == (
        f"error: --dataset defaults to the release's CUB, and its folder {os.path.join('datasets', 'CUB')}/ does "
        "not exist: get its four pickles (docs/zscrgan.md), or run on the embedded data with --dataset synthetic")
    r = _cli(["--dataset", "synthetic", "--batch_size", "0"], tmp_path)
    assert r.returncode == 2 and "--batch_size" in r.stderr
    assert not os.path.exists(tmp_path / "ckt_logs")


def test_divergence_stops_and_keeps_the_last_good_state(tmp_path):
    from common.errors import DivergenceError

    s1, h1, out = _run(tmp_path, "d", 1)
    before = sorted(os.listdir(out / "checkpoints")), sorted(os.listdir(out / "res"))
    training.set_seed(1)
    data = zdata.from_dataset(make_synthetic("small", seed=0), val_classes=2, seed=0)
    cfg = ZSCRGANConfig(seed=1, kl_div_coefficient=float("nan"), **TINY)  # every generator loss is NaN
    with pytest.raises(DivergenceError, match="non-finite .* at cycle 2"):
        train(cfg, data, str(out), str(out / "res"), 3)
    assert (sorted(os.listdir(out / "checkpoints")), sorted(os.listdir(out / "res"))) == before
    assert [{k: v for k, v in r.items() if k != "train_seconds"}
            for r in json.load(open(out / "history.json"))["history"]] == h1


def test_cli_divergence_exit_code(tmp_path):
    r = _cli(["--dataset", "synthetic:small", "--gf_dim", "8", "--df_dim", "8", "--embed_dim", "4", "--z_dim", "2",
              "--e_iters", "1", "--m_iters", "1", "--n_critic", "1", "--max_cycles", "1", "--generator_lr",
              "1e30", "--output_dir", str(tmp_path / "o")], tmp_path)
    assert r.returncode == 3 and "training diverged" in r.stderr and "Traceback" not in r.stderr
    assert not os.path.exists(tmp_path / "o" / "results.json")
