"""JFSE networks against spec jfse.md §2 and §10 tests 1-2."""

import numpy as np
import pytest
import tensorflow as tf

from jfse_tf.model import JFSENetworks

SPEC_PARAMS = {"image_generator": 19_243_008, "text_generator": 3_690_796, "image_critic": 18_014_209,
               "text_critic": 2_465_793, "image_regressor": 18_010_412, "text_regressor": 2_461_996,
               "modality_classifier": 56_627}


@pytest.fixture(scope="module")
def nets():
    tf.keras.utils.set_random_seed(0)
    return JFSENetworks()


def test_parameter_counts_match_release(nets):
    for group in nets.groups.values():
        for model in group:
            assert model.count_params() == SPEC_PARAMS[model.name], model.name


def test_shapes_and_nonnegative_outputs(nets):
    c, z = tf.random.normal((3, 300)), tf.random.normal((3, 300))
    v, t = nets.image_generator(c, z), nets.text_generator(c, z)
    assert v.shape == (3, 4096) and t.shape == (3, 300)
    assert float(tf.reduce_min(v)) >= 0 and float(tf.reduce_min(t)) >= 0
    assert nets.image_critic(v, c).shape == (3, 1) and nets.text_critic(t, c).shape == (3, 1)
    e = nets.image_regressor(tf.random.normal((3, 4096)))
    assert e.shape == (3, 300) and float(tf.reduce_min(e)) >= 0
    assert nets.modality_classifier(e, tf.constant(1.0)).shape == (3, 2)


def test_glorot_uniform_kernels_zero_biases(nets):
    kernel, bias = nets.image_critic.hidden.kernel.numpy(), nets.image_critic.hidden.bias.numpy()
    limit = np.sqrt(6.0 / (4396 + 4096))
    assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.95 * limit
    assert kernel.std() == pytest.approx(limit / np.sqrt(3), rel=0.01)
    assert not bias.any()


def test_critic_leaky_relu_slope_and_classifier_linearity(nets):
    critic = nets.text_critic
    x = tf.random.normal((4, 300))
    c = tf.random.normal((4, 300))
    h = critic.hidden(tf.concat([x, c], axis=1))
    expected = critic.score(tf.where(h > 0, h, 0.2 * h))
    np.testing.assert_allclose(critic(x, c).numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
    mc = nets.modality_classifier
    a, b = tf.random.normal((2, 300)), tf.random.normal((2, 300))
    zero = mc(tf.zeros((1, 300)), tf.constant(0.0))
    lhs = mc(a + b, tf.constant(0.0)) - zero
    rhs = (mc(a, tf.constant(0.0)) - zero) + (mc(b, tf.constant(0.0)) - zero)
    np.testing.assert_allclose(lhs.numpy(), rhs.numpy(), atol=1e-4)  # affine: no activations


def test_modality_classifier_reverses_gradient(nets):
    e = tf.random.normal((2, 300))
    grads = []
    for scale in (0.0, 1.0):
        with tf.GradientTape() as tape:
            tape.watch(e)
            out = tf.reduce_sum(nets.modality_classifier(e, tf.constant(scale)))
        grads.append(tape.gradient(out, e).numpy())
    assert np.allclose(grads[0], 0.0)
    w = np.eye(300)
    for layer in nets.modality_classifier.layers_:
        w = w @ layer.kernel.numpy()
    np.testing.assert_allclose(grads[1], -np.tile(w.sum(axis=1), (2, 1)), rtol=1e-3, atol=1e-6)
