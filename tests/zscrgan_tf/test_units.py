"""ZSCRGAN units against spec zscrgan.md §10 (hand values, layer facts, sampler, optimizers)."""

import math

import numpy as np
import pytest
import tensorflow as tf

from common import training
from common.dataset import CrossModalDataset, Split
from common.optimizers import TF1RMSprop
from zscrgan_tf import data as zdata
from zscrgan_tf import losses
from zscrgan_tf.model import CSEM, Critic, GeneratorNet, lrelu
from zscrgan_tf.config import ZSCRGANConfig
from zscrgan_tf.task import ZSCRGANTrainer, results_file_name


# ------------------------------------------------------------------ losses

@pytest.mark.parametrize("mu,s,zscrgan,standard", [
    (1.0, 0.0, 0.609141, 0.5), (0.0, 1.0, 0.609141, 2.194528),
    (1.0, 1.0, 2.694528, 2.694528), (-1.0, 0.5, 0.365765, 0.859141)])
def test_kl_reference_values(mu, s, zscrgan, standard):
    mu_t, s_t = tf.constant([[mu]]), tf.constant([[s]])
    assert float(losses.kl_divergence(mu_t, s_t)) == pytest.approx(zscrgan, abs=1e-6)
    assert float(losses.kl_divergence(mu_t, s_t, "standard")) == pytest.approx(standard, abs=1e-6)


def test_kl_two_by_two_and_symmetry():
    mu = tf.constant([[1.0, 0.0], [0.0, -0.5]])
    s = tf.constant([[0.0, 1.0], [0.5, 0.0]])
    assert float(losses.kl_divergence(mu, s)) == pytest.approx(0.367727, abs=1e-6)
    assert float(losses.kl_divergence(mu, s, "standard")) == pytest.approx(0.794667, abs=1e-6)
    assert float(losses.kl_divergence(s, mu)) == pytest.approx(0.367727, abs=1e-6)  # symmetric surrogate
    assert float(losses.kl_divergence(tf.zeros((2, 2)), tf.zeros((2, 2)))) == 0.0


def test_critic_mm_and_csem_hand_values():
    assert float(losses.critic_loss(tf.constant([1.0, 2.0]), tf.zeros(2), tf.ones(2))) == pytest.approx(-1.0)
    fake, real, wrong = tf.constant([[0.0, 0.0]]), tf.constant([[1.0, 0.0]]), tf.constant([[0.0, 3.0]])
    assert float(losses.max_margin(fake, real, wrong)) == pytest.approx(0.0)  # 1 - 3 + 2
    # the release's term is unclamped; the hinge flag clamps it
    assert float(losses.max_margin(fake, real, wrong, margin=1.0)) == pytest.approx(-1.0)
    assert float(losses.max_margin(fake, real, wrong, margin=1.0, hinge=True)) == 0.0
    c = tf.constant([[1.0, 0.0], [0.0, 2.0]])
    same, orth = c * 3.0, tf.constant([[0.0, 1.0], [5.0, 0.0]])
    assert float(losses.csem_loss(same, orth, c)) == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)


def test_csem_batch_mean_differs_from_per_sample():
    c = tf.constant([[1.0, 0.0], [1.0, 0.0]])
    fake = tf.constant([[1.0, 0.0], [0.0, 1.0]])   # cos 1, 0
    wrong = tf.constant([[0.0, 1.0], [1.0, 0.0]])  # cos 0, 1
    batch = float(losses.csem_loss(fake, wrong, c))
    per = float(losses.csem_loss(fake, wrong, c, per_sample=True))
    assert batch == pytest.approx(math.log(2.0), abs=1e-6)  # softplus(mean 0.5 - mean 0.5)
    assert per == pytest.approx(0.5 * (math.log(1 + math.e ** -1) + math.log(1 + math.e)), abs=1e-6)


# ------------------------------------------------------------------ networks

def test_layer_facts():
    g = GeneratorNet(text_dim=12, image_dim=9, embed_dim=6, z_dim=4, gf_dim=256)
    t = tf.random.normal((5, 12))
    eps = tf.random.truncated_normal((5, 6))
    fake, c, mu, s = g(t, eps, tf.random.normal((5, 4)))
    assert fake.shape == (5, 9) and c.shape == mu.shape == s.shape == (5, 6)
    assert float(tf.reduce_min(fake)) >= 0.0
    assert Critic(9, 12, df_dim=7)(fake, t).shape == (5, 1)
    assert CSEM(9, 6)(fake).shape == (5, 6)
    big = g.g2.kernel.numpy()  # 256 x 512
    assert abs(big.std() - 0.02) < 0.001 and abs(big.mean()) < 0.001
    assert all(np.all(layer.bias.numpy() == 0) for layer in (g.ca, g.g1, g.g2, g.g3))
    assert float(lrelu(tf.constant(-1.0))) == pytest.approx(-0.2)
    # with s very negative the sample collapses onto the mean
    assert np.allclose(GeneratorNet.sample(mu, tf.fill(mu.shape, -30.0), eps), mu, atol=1e-6)
    # parameter count for the release's defaults at T=1024, I=2048 (spec §2): 26,752,001
    full = [GeneratorNet(1024, 2048), Critic(2048, 1024), CSEM(2048)]
    counts = [sum(int(np.prod(v.shape)) for v in m.trainable_variables) for m in full]
    assert counts == [2_099_200 + 19_406_848, 3_147_777, 2_098_176]


# ------------------------------------------------------------------ optimizers

def test_conditioning_noise_is_truncated_at_two_sigma():
    trainer = ZSCRGANTrainer(ZSCRGANConfig(gf_dim=8, df_dim=8, embed_dim=64, z_dim=2), _tiny_data())
    eps, eps_w, z, _ = trainer._noise(2000)
    assert eps.shape == (2000, 64) and z.shape == (2000, 2)
    assert float(tf.reduce_max(tf.abs(eps))) <= 2.0 and float(tf.reduce_max(tf.abs(eps_w))) <= 2.0
    assert abs(float(tf.math.reduce_std(eps)) - 0.88) < 0.02  # std of N(0, 1) truncated at +-2
    assert not np.array_equal(eps.numpy(), eps_w.numpy())  # independent draws per branch


def test_tf1_rmsprop_first_step_and_adam_epsilon():
    for init, expected in (("ones", -0.1), ("zeros", -0.1 / math.sqrt(0.1))):
        w = tf.Variable([0.0])
        opt = TF1RMSprop(0.1, accumulator_init=init)
        opt.apply_gradients([(tf.constant([1.0]), w)])
        assert float(w[0]) == pytest.approx(expected, rel=1e-6)
    assert TF1RMSprop().epsilon == 1e-10
    trainer = ZSCRGANTrainer(ZSCRGANConfig(gf_dim=8, df_dim=8, embed_dim=4, z_dim=2), _tiny_data())
    assert trainer.c_opt.epsilon == 1e-8 and trainer.c_opt.beta_1 == 0.5


# ------------------------------------------------------------------ data + sampler

def _dataset(seen, unseen, per_class=3, texts_per_class=2, i_dim=5, t_dim=4, trainids=None):
    """Unpaired per-class collections as the ZSCRGAN reader returns them."""
    rng = np.random.default_rng(0)

    def split(classes):
        il = np.repeat(classes, per_class)
        tl = np.repeat(classes, texts_per_class)
        return Split(rng.random((len(il), i_dim)).astype(np.float32), rng.random((len(tl), t_dim)).astype(np.float32),
                     il.astype(np.int64), text_labels=tl.astype(np.int64))

    ds = CrossModalDataset("tiny", split(np.asarray(seen)), split(np.asarray(unseen)),
                           num_classes=max(seen + unseen) + 1, unseen_classes=np.asarray(sorted(unseen)))
    ds.extras["trainids"] = list(trainids or seen)
    return ds


def _tiny_data(**kw):
    return zdata.from_dataset(_dataset(list(range(5)), [5, 6], **kw))


def test_sampler_class_blocks_padding_and_reshuffle():
    seen = list(range(1, 151))
    data = zdata.from_dataset(_dataset(seen, [0, 151, 152], per_class=4))
    s = zdata.ClassBlockSampler(data, 32, seed=0)
    batches = [s.next_batch() for _ in range(10)]
    assert [int(b[2].sum()) for b in batches[:5]] == [32, 32, 32, 32, 22]
    # first pass walks the pickled order unshuffled; the zero rows of the short block have label 0
    assert np.concatenate([b[3][b[2] > 0] for b in batches[:5]]).tolist() == seen
    assert batches[4][3][22:].tolist() == [0] * 10
    second = np.concatenate([b[3][b[2] > 0] for b in batches[5:10]])
    assert sorted(second.tolist()) == seen and second.tolist() != seen  # reshuffled, every class once
    assert s.state["shuffles"] == 1
    unseen_rows = set()
    for b in batches:
        assert not (set(b[3].tolist()) & {151, 152})
        unseen_rows |= set(b[3].tolist())
    # without padding the short block is refilled from the reshuffled list
    s2 = zdata.ClassBlockSampler(data, 32, seed=0, pad=False)
    assert all(int(s2.next_batch()[2].sum()) == 32 for _ in range(6))


def test_sampler_image_cursor_and_first_text():
    data = _tiny_data(per_class=3, texts_per_class=2)
    s = zdata.ClassBlockSampler(data, 2, seed=0)  # B < N = 5: blocks of 2 classes
    served = {c: [] for c in range(5)}
    texts = set()
    for _ in range(12):
        img, txt, valid, lab = s.next_batch()
        for i in np.flatnonzero(valid):
            c = int(lab[i])
            served[c].append(int(img[i]) - data.image_start[c])
            texts.add(int(txt[i]) - data.text_start[c])
    assert all(v[:4] == [1, 2, 0, 1] for v in served.values())
    assert texts == {0}
    cyc = zdata.ClassBlockSampler(_tiny_data(texts_per_class=2), 5, seed=0, train_text="cycle")
    assert [int(cyc.next_batch()[1][0]) % 2 for _ in range(3)] == [0, 1, 0]


def test_sampler_batch_larger_than_class_count():
    data = _tiny_data()
    s = zdata.ClassBlockSampler(data, 32, seed=3)
    for _ in range(5):
        _, _, valid, labels = s.next_batch()
        counts = np.bincount(labels, minlength=5)
        assert valid.all() and sorted(counts.tolist()) == [6, 6, 6, 7, 7]


def test_sampler_state_roundtrip_and_seed():
    data = zdata.from_dataset(_dataset(list(range(1, 41)), [0, 41], per_class=2))
    a, b = zdata.ClassBlockSampler(data, 32, seed=1), zdata.ClassBlockSampler(data, 32, seed=1)
    for _ in range(7):
        a.next_batch()
    b.set_state(a.get_state())
    for _ in range(5):
        x, y = a.next_batch(), b.next_batch()
        assert all(np.array_equal(u, v) for u, v in zip(x, y))


def test_wrong_pairs_roll_the_batch():
    trainer = ZSCRGANTrainer(ZSCRGANConfig(batch_size=4, gf_dim=8, df_dim=8, embed_dim=4, z_dim=2), _tiny_data())
    rows = tf.constant([0, 3, 6, 9], tf.int64)
    x_r, x_w, t, t_w = trainer._batch(rows, tf.constant([0, 2, 4, 6], tf.int64), tf.constant([1.0, 1.0, 1.0, 0.0]))
    assert np.array_equal(x_w.numpy(), np.roll(x_r.numpy(), 1, axis=0))
    assert np.array_equal(t_w.numpy(), np.roll(t.numpy(), 1, axis=0))
    assert not x_r.numpy()[3].any() and not t.numpy()[3].any()  # padded row is zero


# ------------------------------------------------------------------ steps

def _snapshot(model):
    return [v.numpy().copy() for v in model.trainable_variables]


def _changed(model, before):
    return [not np.array_equal(a, v.numpy()) for a, v in zip(before, model.trainable_variables)]


def test_each_step_moves_only_its_group_and_clipping():
    # seeded: some draws of this tiny generator (5 ReLU outputs) emit all zeros, so CSEM sees one input for
    # every row, its right and wrong pairs tie and its gradient is exactly zero (seed 6 does; 0 does not)
    training.set_seed(0)
    cfg = ZSCRGANConfig(batch_size=4, gf_dim=16, df_dim=16, embed_dim=8, z_dim=4, discriminator_lr=1.0)
    trainer = ZSCRGANTrainer(cfg, _tiny_data())
    nets = {"critic": trainer.critic, "generator": trainer.gen, "csem": trainer.csem}
    assert float(tf.reduce_max(tf.abs(trainer.critic.d1.kernel))) > cfg.clip_val  # not clipped before a step
    for kind, owner in (("critic", "critic"), ("generator", "generator"), ("csem", "csem")):
        before = {k: _snapshot(m) for k, m in nets.items()}
        trainer.step(kind)
        for k, m in nets.items():
            moved = _changed(m, before[k])
            # (the critic's output bias has zero gradient: (1/2 + 1/2) - 1)
            assert (any(moved) if k == owner else not any(moved)), (kind, k, moved)
    for v in trainer.critic.trainable_variables:  # lr 1.0 pushes far out; clipping brings every D variable back
        assert float(tf.reduce_max(tf.abs(v))) <= cfg.clip_val + 1e-9


def test_results_file_name_is_python2_float_str():
    assert results_file_name(0.521) == "acc0.521.pkl"
    assert results_file_name(1 / 3) == "acc0.333333333333.pkl"
