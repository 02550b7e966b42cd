"""ACMR training semantics, learning, determinism and CLI: spec acmr.md §10 tests 7-12."""

import json
import os
import sys

import numpy as np
import pytest
import tensorflow as tf

from acmr_tf.config import ACMRConfig
from acmr_tf.task import ACMRTrainer
from common import metrics, pipelines, training
from common.dataset import Split
from common.synthetic import make_synthetic
from tests import launch
from tests.common import fixtures
from tests.conftest import REPO


@pytest.fixture(scope="module")
def ds():
    return make_synthetic("small")


def trainer(ds, **kw):
    training.set_seed(0)
    return ACMRTrainer(ACMRConfig(**kw), ds.image_dim, ds.text_dim, ds.num_classes)


def weights(t, group):
    return [v.numpy().copy() for v in t.nets.variables(group)]


def first_batch(t, ds):
    b = next(iter(pipelines.paired_batches(ds.train, t.cfg.batch_size)))
    return b["image"], b["text"], b["label"]


def test_three_independent_adam_settings(ds):
    for preset, names in (("release", {"emb", "domain"}), ("paper", {"total"})):
        t = trainer(ds, preset=preset)
        assert set(t.optimizers) == names
        for opt in t.optimizers.values():
            assert (float(opt.learning_rate), opt.beta_1, opt.beta_2, opt.epsilon) == pytest.approx((1e-4, 0.5, 0.999, 1e-8))
    t = trainer(ds)
    slots = [id(v) for o in t.optimizers.values() for v in o.variables]
    assert len(slots) == len(set(slots))


def test_release_preset_update_semantics(ds):
    """Label classifier frozen; lambda and the modality head never touch the projector update."""
    out = {}
    for scale in (0.0, 1.0):
        t = trainer(ds)
        t.grl_scale.assign(scale)
        lc, dc = weights(t, "label_classifier"), weights(t, "modality_classifier")
        t.train_step(*first_batch(t, ds))
        assert all(np.array_equal(a, b) for a, b in zip(lc, weights(t, "label_classifier")))
        assert any(not np.array_equal(a, b) for a, b in zip(dc, weights(t, "modality_classifier")))
        out[scale] = weights(t, "projectors")
    assert all(np.array_equal(a, b) for a, b in zip(out[0.0], out[1.0]))


def test_paper_preset_gradient_is_emb_minus_lambda_adv(ds):
    t = trainer(ds, preset="paper", shuffle=False)
    x_v, x_t, y = first_batch(t, ds)
    proj = t.nets.variables("projectors")

    def grads(scale, key):
        t.grl_scale.assign(scale)
        with tf.GradientTape() as tape:
            terms = t.losses(x_v, x_t, y)
            loss = terms["emb_loss"] + terms["domain_loss"] if key == "total" else terms[key]
        return tape.gradient(loss, proj)

    lam = 0.46212
    total, emb = grads(lam, "total"), grads(lam, "emb_loss")
    adv_plain = grads(-1.0, "domain_loss")  # reversal by -1 = the plain gradient of L_adv
    for g, e, a in zip(total, emb, adv_plain):
        np.testing.assert_allclose(g.numpy(), (e - lam * a).numpy(), rtol=1e-4, atol=1e-6)
    # lambda = 0: the first projector update equals the release preset's; the label classifier moves
    release = trainer(ds)
    paper = trainer(ds, preset="paper", shuffle=False)
    lc = weights(paper, "label_classifier")
    for tr in (release, paper):
        tr.train_step(*first_batch(tr, ds))
    for a, b in zip(weights(release, "projectors"), weights(paper, "projectors")):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert any(not np.array_equal(a, b) for a, b in zip(lc, weights(paper, "label_classifier")))


def test_release_batching_and_evaluated_pairs():
    """Wikipedia sizes: 33 train batches at B = 64, evaluation on 640 of 693 test pairs."""
    rng = np.random.default_rng(0)
    test = Split(rng.normal(size=(693, 6)).astype(np.float32), rng.normal(size=(693, 5)).astype(np.float32),
                 np.arange(693) % 10)
    training.set_seed(0)
    t = ACMRTrainer(ACMRConfig(), 6, 5, 10)
    train = Split(np.zeros((2173, 6), np.float32), np.zeros((2173, 5), np.float32), np.arange(2173) % 10)
    assert t.make_runner(train).steps == 33
    assert t.evaluate(test)["evaluated_pairs"] == 640
    t = ACMRTrainer(ACMRConfig(eval_full_test=True), 6, 5, 10)
    assert t.evaluate(test)["evaluated_pairs"] == 693


def run_epochs(t, ds, epochs, runner=None):
    runner = runner or t.make_runner(ds.train)
    lines = []
    for e in range(epochs):
        t.grl_scale.assign(2 / (1 + np.exp(-10 * e / epochs)) - 1)
        values = runner.run_epoch(e)
        lines += [{k: float(v[i]) for k, v in values.items()} for i in range(runner.steps)]
    return lines


def test_synthetic_learns_far_above_random_embeddings(ds):
    """§10.10 at CI size: untrained within ±0.1 of the random-embedding baseline in both directions;
    30 epochs of the release preset >= baseline + 0.3 in both; the paper preset within 0.05 of the
    release preset or above, in each direction."""
    rng = np.random.default_rng(0)
    n = len(ds.test) - len(ds.test) % 64
    base = metrics.acmr_map(rng.normal(size=(n, 40)), rng.normal(size=(n, 40)), ds.test.labels[:n])
    results = {}
    for preset, variant in (("release", "simple"), ("release", "triplet"), ("paper", "simple")):
        t = trainer(ds, preset=preset, variant=variant, epochs=30)
        if preset == "release" and variant == "simple":
            untrained = t.evaluate(ds.test)
            for d in ("i2t", "t2i"):
                assert abs(untrained[f"{d}_map_at_50"] - base[d]) < 0.1, (d, untrained, base)
        lines = run_epochs(t, ds, 30)
        assert all(np.isfinite(list(line.values())).all() for line in lines)
        r = t.evaluate(ds.test)
        results[preset, variant] = r
        assert r["i2t_map_at_50"] >= base["i2t"] + 0.3 and r["t2i_map_at_50"] >= base["t2i"] + 0.3, (preset, variant, r)
    rel, pap = results["release", "simple"], results["paper", "simple"]
    for d in ("i2t", "t2i"):
        assert pap[f"{d}_map_at_50"] >= rel[f"{d}_map_at_50"] - 0.05, (d, rel, pap)


def test_loss_composition_is_the_trainers_own(ds, monkeypatch):
    """§10.4 on the trainer's actual emb_loss: every term mocked to 1 gives 101.02 (wiki simple),
    51.2 (nus simple) and 101 (wiki triplet)."""
    from acmr_tf import losses

    one = lambda *a, **k: tf.constant(1.0)  # noqa: E731
    for name in ("label_loss", "similar_loss", "dissimilar_loss", "triplet_loss"):
        monkeypatch.setattr(losses, name, one)
    b = next(iter(pipelines.paired_batches(ds.train, 64)))
    for kw, want in ((dict(variant="simple", arch="wiki"), 101.02), (dict(variant="simple", arch="nuswide"), 51.2),
                     (dict(variant="triplet", arch="wiki"), 101.0)):
        t = trainer(ds, **kw)
        assert float(t.losses(b["image"], b["text"], b["label"])["emb_loss"]) == pytest.approx(want), kw


def test_release_projector_update_does_not_depend_on_the_modality_head(ds):
    """§10.7: with another modality head (other weights, another lambda), the release preset's
    projector update is bit-identical; the head itself moves."""
    after = []
    for scale, head_seed in ((0.0, None), (0.9, 7)):
        t = trainer(ds)
        t.grl_scale.assign(scale)
        if head_seed is not None:
            rng = np.random.default_rng(head_seed)
            for v in t.nets.variables("modality_classifier"):
                v.assign(rng.normal(size=v.shape).astype(np.float32))
        head = weights(t, "modality_classifier")
        t.train_step(*first_batch(t, ds))
        assert any(not np.array_equal(a, b) for a, b in zip(head, weights(t, "modality_classifier")))
        after.append(weights(t, "projectors"))
    assert all(np.array_equal(a, b) for a, b in zip(*after))


def test_paper_preset_changes_only_the_listed_switches():
    """§10.12: --preset paper differs from release only in the four switches of §4 (and its name)."""
    import dataclasses

    rel = dataclasses.asdict(ACMRConfig(preset="release").resolve())
    pap = dataclasses.asdict(ACMRConfig(preset="paper").resolve())
    assert {k for k in rel if rel[k] != pap[k]} == {"preset", "adv_to_projectors", "train_label_classifier",
                                                     "shuffle", "eval_full_test"}


def test_nuswide_id_lists_are_shuffled_once_as_the_release(tmp_path):
    """Issue 19, item 1 / §10.12: the release shuffled NUS-WIDE's train and test id lists once before
    training; --noshuffle_ids keeps pickled order; Wikipedia keeps file order."""
    from acmr_tf.train import release_order
    from common import readers

    fixtures.write_nuswide(str(tmp_path / "nus"), n_train=70, n_test=66)
    ds = readers.read_acmr_nuswide(str(tmp_path / "nus"))
    train, test = release_order(ds, True, seed=3)
    assert sorted(train.ids.tolist()) == sorted(ds.train.ids.tolist()) and train.ids.tolist() != ds.train.ids.tolist()
    assert sorted(test.ids.tolist()) == sorted(ds.test.ids.tolist()) and test.ids.tolist() != ds.test.ids.tolist()
    again, _ = release_order(ds, True, seed=3)
    assert again.ids.tolist() == train.ids.tolist()  # seeded here (the release's shuffle was not)
    kept, _ = release_order(ds, False, seed=3)
    assert kept.ids.tolist() == ds.train.ids.tolist()
    fixtures.write_wikipedia(str(tmp_path / "wiki"))
    wiki = readers.read_acmr_wikipedia(str(tmp_path / "wiki"))
    assert release_order(wiki, True, seed=3)[0] is wiki.train


def test_same_seed_same_loss_lines_in_graph_and_per_batch(ds):
    """The in-graph epoch feeds the batches the tf.data pipeline feeds (reshuffled per epoch)."""
    a = run_epochs(trainer(ds, variant="triplet", shuffle=True), ds, 2)
    b = run_epochs(trainer(ds, variant="triplet", shuffle=True), ds, 2)
    assert a == b and "triplet_loss" in a[0] and len(a) == 2 * (len(ds.train) // 64)
    t = trainer(ds, variant="triplet", shuffle=True)
    batches = pipelines.paired_batches(ds.train, 64, shuffle=True, seed=0, drop_remainder=True)
    per_batch = training.BatchRunner(t.train_step, batches, ("image", "text", "label"), tuple(a[0]), len(a) // 2)
    c = run_epochs(t, ds, 2, per_batch)
    for x, y in zip(a, c):
        assert x == pytest.approx(y, rel=1e-5)


# ---------------------------------------------------------------------- CLI

def cli(*args, cwd=REPO):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return launch.run([sys.executable, "-m", "acmr_tf.train", *args], cwd=cwd, env=env,
                      capture_output=True, text=True, timeout=300)


def test_cli_simple_and_triplet_contract(tmp_path):
    """§10.12: --log_batches prints the release's per-batch lines (§4 fields, each batch's own end
    time), then the three [Eval ...] lines; by default one progress line per epoch instead."""
    res = cli("--variant", "simple", "--dataset", "synthetic", "--epochs", "2", "--output_dir", str(tmp_path / "s"),
              "--log_batches")
    assert res.returncode == 0, res.stderr[-2000:]
    for field in ("Epoch: [ 1][   5/   6] time:", "emb_loss:", "domain_loss:", "label_loss:", "similar_loss:",
                  "dissimilar_loss:", "[Eval] transformed test features", "[Eval - txt2img] mAP:", "[Eval - img2txt] mAP:"):
        assert field in res.stdout, field
    times = [float(line.split("time: ")[1].split(",")[0]) for line in res.stdout.splitlines() if "Epoch: [ 0]" in line]
    assert len(times) == 6 and len(set(times)) == 6, times  # one call per batch: a time per batch
    r = json.loads((tmp_path / "s" / "results.json").read_text())
    assert {"i2t_map_at_50", "t2i_map_at_50", "i2t_map_all", "t2i_map_all", "seconds_per_epoch"} <= set(r)
    assert r["preset"] == "release" and r["config"]["w_dis"] == 0.02 and os.listdir(tmp_path / "s" / "tb")
    # tools.export: the two projectors, equal to the checkpointed ones (wiki widths, emb 40)
    from acmr_tf.model import ACMRNetworks

    nets = ACMRNetworks(128, 64, 10)
    models = {"image_projector": nets.image_projector, "text_projector": nets.text_projector}
    meta = fixtures.check_export(tmp_path / "s", tmp_path / "exported", models,
                                 lambda m, x: m["image_projector"](x), lambda m, t: m["text_projector"](t), 128, 64)
    assert meta["method"] == "acmr_simple" and meta["signatures"] == ["embed_image", "embed_text"]
    res = cli("--variant", "triplet", "--epochs", "1", "--output_dir", str(tmp_path / "t"), "--nojit_compile",
              "--log_batches")
    assert res.returncode == 0 and "triplet_loss:" in res.stdout and "similar_loss" not in res.stdout
    res = cli("--variant", "triplet", "--epochs", "2", "--output_dir", str(tmp_path / "q"), "--nojit_compile")
    assert res.returncode == 0 and "Epoch: [" not in res.stdout
    progress = [line for line in res.stdout.splitlines() if line.startswith("epochs:")]
    assert len(progress) == 2 and "2/2" in progress[-1] and "i2t_map_at_50=" in progress[-1], res.stdout


def test_cli_nuswide_widths_and_errors(tmp_path):
    fixtures.write_nuswide(str(tmp_path / "nus"), n_train=70, n_test=66)
    work = tmp_path / "cwd"
    work.mkdir()
    res = cli("--dataset", "nuswide", "--data_dir", str(tmp_path / "nus"), "--epochs", "1", "--output_dir", str(tmp_path / "n"),
              "--nojit_compile", cwd=str(work))
    assert res.returncode == 0, res.stderr[-2000:]
    assert os.listdir(work) == [] and sorted(os.listdir(tmp_path)) == ["cwd", "n", "nus"]  # §10.12: nothing else
    assert "shuffled once" in res.stdout
    cfg = json.loads((tmp_path / "n" / "results.json").read_text())["config"]
    assert cfg["arch"] == "nuswide" and (cfg["w_label"], cfg["w_sim"], cfg["w_dis"]) == (50, 1, 0.2)
    res = cli("--dataset", "wikipedia", "--data_dir", str(tmp_path / "none"), "--output_dir", str(tmp_path / "w"))
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1].startswith("error: data folder")
    assert "Traceback" not in res.stderr and not (tmp_path / "w").exists()
    res = cli("--variant", "triplet", "--dataset", "nuswide", "--data_dir", str(tmp_path / "nus"))
    assert res.returncode == 2 and "no triplet variant" in res.stderr
    res = cli("--epochs", "0")
    assert res.returncode == 2 and "--epochs must be a positive integer" in res.stderr


def test_cli_monitors_a_val_split_without_selecting_on_it(tmp_path):
    """A feature folder's val split is evaluated every epoch (history, `val/` scalars, results.json
    `val_*`: cosine mAP@all of the final weights, equal to a brute-force reference); the reported test
    numbers stay the last epoch's, as the release's."""
    data = fixtures.write_feature_folder(str(tmp_path / "f"), one_based=False, with_val=True)
    res = cli("--dataset", "features", "--data_dir", str(tmp_path / "f"), "--epochs", "2", "--batch_size", "4",
              "--eval_full_test", "--output_dir", str(tmp_path / "run"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "12 train / 4 val / 6 test pairs" in res.stdout and "val pairs (monitored, not used to select)" in res.stdout
    history = json.loads((tmp_path / "run" / "history.json").read_text())["history"]
    assert [sorted(h["val"]) for h in history] == [["i2t_map_all", "t2i_map_all"]] * 2
    r = json.loads((tmp_path / "run" / "results.json").read_text())
    assert r["i2t_map_all"] == history[-1]["test"]["i2t_map_all"]
    from acmr_tf.model import ACMRNetworks
    from common.export import restore_models
    from tests.common.test_metrics import brute_force_ap

    nets = ACMRNetworks(7, 3, 4)
    restore_models(str(tmp_path / "run"), image_projector=nets.image_projector, text_projector=nets.text_projector)
    img, txt, lab = data["val"]
    e_v, e_t, lab = nets.image_projector(img).numpy(), nets.text_projector(txt).numpy(), lab.ravel()
    assert r["val_i2t_map_all"] == pytest.approx(brute_force_ap(e_v, e_t, lab, lab)[0].mean(), abs=1e-6)
    assert r["val_t2i_map_all"] == pytest.approx(brute_force_ap(e_t, e_v, lab, lab)[0].mean(), abs=1e-6)


def test_a_run_started_with_a_flag_now_refused_as_ignored_still_resumes(tmp_path):
    """`--margin` with the simple variant did nothing and is now refused; a run folder whose run.json
    records it (started before) still resumes with the command that started it, with a warning."""
    out = str(tmp_path / "run")
    assert cli("--epochs", "1", "--output_dir", out, "--nojit_compile").returncode == 0
    record = json.loads(open(os.path.join(out, "run.json")).read())
    record["settings"]["margin"] = 0.5  # as a run started with --margin 0.5 before the refusal
    with open(os.path.join(out, "run.json"), "w") as f:
        json.dump(record, f)
    res = cli("--epochs", "1", "--output_dir", out, "--nojit_compile", "--margin", "0.5")
    assert res.returncode == 0 and "already complete" in res.stdout, res.stderr[-1500:]
    assert "warning: --margin would be ignored here; accepted because the run in" in res.stdout
    other = cli("--epochs", "1", "--output_dir", str(tmp_path / "new"), "--margin", "0.5")  # a new run: refused
    assert other.returncode == 2 and "--margin is a triplet-variant option" in other.stderr
    assert not os.path.exists(tmp_path / "new")
