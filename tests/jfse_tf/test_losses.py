"""JFSE losses against the hand-computed values of spec jfse.md §3-§4 and §10 tests 4-11."""

import numpy as np
import pytest
import tensorflow as tf

from jfse_tf import losses


class LinearCritic:
    """D([x; c]) = w.x + u.c"""

    def __init__(self, w, u):
        self.w, self.u = tf.constant(w, tf.float32), tf.constant(u, tf.float32)

    def __call__(self, x, c):
        return tf.reduce_sum(x * self.w, axis=1, keepdims=True) + tf.reduce_sum(c * self.u, axis=1, keepdims=True)


def gp(critic, seed=0):
    rng = np.random.default_rng(seed)
    real, fake = rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=(5, 3)).astype(np.float32)
    c = rng.normal(size=(5, 2)).astype(np.float32)
    alpha = tf.random.uniform((5, 1), seed=seed)
    return float(losses.gradient_penalty(critic, real, fake, c, alpha))


def test_gradient_penalty_linear_critic():
    assert gp(LinearCritic([1.0, 0, 0], [3.0, -1.0])) == pytest.approx(0.0, abs=1e-5)
    assert gp(LinearCritic([0.6, 0.8, 0], [0.0, 0.0])) == pytest.approx(0.0, abs=1e-5)
    assert gp(LinearCritic([2.0, 0, 0], [0.0, 0.0])) == pytest.approx(10.0, abs=1e-4)
    # the class-embedding weights never change the penalty
    assert gp(LinearCritic([2.0, 0, 0], [50.0, -7.0])) == pytest.approx(10.0, abs=1e-4)


def test_constant_critic_losses():
    def constant(x, c):
        return tf.zeros((tf.shape(x)[0], 1)) + 0.0 * tf.reduce_sum(x, axis=1, keepdims=True) + 3.0

    penalty = gp(constant)
    assert penalty == pytest.approx(10.0, abs=1e-4)  # zero gradient: (0 - 1)^2 * 10
    k = tf.fill((4, 1), 3.0)
    assert float(losses.critic_loss(k, k, penalty)) == pytest.approx(10.0, abs=1e-4)
    assert float(losses.generator_adversarial_loss(k)) == pytest.approx(-3.0)
    real, fake = tf.constant([[1.0], [2.0]]), tf.constant([[0.5], [0.0]])
    assert float(losses.critic_loss(real, fake, 0.7)) == pytest.approx(0.25 - 1.5 + 0.7)


def test_cmpm_worked_values_and_symmetry():
    eye = np.eye(2, dtype=np.float32)
    assert float(losses.cmpm_loss(eye, eye, np.eye(2))) == pytest.approx(8.7438, abs=1e-4)
    assert float(losses.cmpm_loss(eye, eye, np.array([[1, 0], [1, 0]]))) == pytest.approx(0.2219, abs=1e-4)
    a = np.array([[3, 4], [0, 1]], np.float32)
    b = np.array([[1, 0], [2, 2]], np.float32)
    assert float(losses.cmpm_loss(a, b, np.eye(2))) == pytest.approx(19.5833, abs=1e-4)
    assert float(losses.cmpm_loss(b, a, np.eye(2))) == pytest.approx(19.5833, abs=1e-4)


def numpy_cmmd(x, y):
    def k(a, b):
        d = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return sum(np.exp(-d / (2 * s)) for s in losses.CMMD_SIGMAS)

    return max(1e-4, max(k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean(), 0.0))


def test_cmmd_values():
    assert float(losses.cmmd_loss(np.zeros((1, 1), np.float32), np.ones((1, 1), np.float32), sigmas=(1,))) \
        == pytest.approx(2 - 2 * np.exp(-0.5), abs=1e-6)
    x = np.random.default_rng(0).normal(size=(8, 300)).astype(np.float32)
    assert float(losses.cmmd_loss(x, x)) == pytest.approx(1e-4)
    y = np.random.default_rng(1).normal(size=(8, 300)).astype(np.float32)
    assert float(losses.cmmd_loss(x, y)) == pytest.approx(numpy_cmmd(x.astype(np.float64), y.astype(np.float64)), rel=1e-4)


def test_cmca_values():
    h = np.array([[1, 0], [-1, 0]], np.float32)
    g = np.array([[0, 1], [0, -1]], np.float32)
    assert float(losses.cmca_loss(h, g)) == pytest.approx(2.0)
    assert float(losses.cmca_loss(h, h)) == pytest.approx(0.0)


def test_objective_coefficients():
    ones = {k: 1.0 for k in ("g_adv_img", "g_adv_txt", "cyc_img", "cyc_txt", "adv_syn", "reg_img", "reg_txt",
                             "align_real", "adv_real", "align_syn")}
    assert float(losses.generator_objective(ones, losses.RELEASE_WEIGHTS)) == pytest.approx(2.201)
    assert float(losses.regressor_objective(ones, losses.RELEASE_WEIGHTS)) == pytest.approx(2.030201)


def test_modality_loss_and_regression():
    zeros = tf.zeros((3, 2))
    assert float(losses.modality_loss(zeros, zeros)) == pytest.approx(2 * np.log(2), abs=1e-6)
    confident = tf.constant([[-10.0, 10.0]])  # image rows target index 1
    assert float(losses.modality_loss(confident, -confident)) < 1e-6
    assert float(losses.regression_loss(tf.ones((2, 3)), tf.zeros((2, 3)))) == pytest.approx(1.0)


def test_batch_minmax():
    x = tf.constant([[1.0, 5.0, 2.0], [3.0, 5.0, 4.0], [2.0, 5.0, 0.0]])
    np.testing.assert_allclose(losses.batch_minmax(x).numpy(),
                               [[0, 0, 0.5], [1, 0, 1], [0.5, 0, 0]])
    same_class = tf.tile(tf.constant([[0.3, -1.0, 2.0]]), (4, 1))  # single-class batch
    assert not losses.batch_minmax(same_class).numpy().any()
