"""Optimizers with the TF1 semantics some releases depend on."""

from __future__ import annotations

import keras


class TF1RMSprop(keras.optimizers.RMSprop):
    """`tf.compat.v1.train.RMSPropOptimizer`: mean-square accumulators start at ONE, epsilon 1e-10.

    Keras 3 starts them at zero, which makes the first steps ~3x larger (lr / sqrt(0.1) for a
    unit gradient instead of lr); WGAN releases trained with TF1 rely on the gentler start.
    `accumulator_init="zeros"` gives Keras' behaviour with the same epsilon.
    """

    def __init__(self, learning_rate=1e-3, rho=0.9, epsilon=1e-10, accumulator_init: str = "ones",
                 name="tf1_rmsprop", **kwargs):
        if accumulator_init not in ("ones", "zeros"):
            raise ValueError(f"accumulator_init must be 'ones' or 'zeros', got {accumulator_init!r}")
        super().__init__(learning_rate=learning_rate, rho=rho, momentum=0.0, epsilon=epsilon,
                         centered=False, name=name, **kwargs)
        self.accumulator_init = accumulator_init

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        if self.accumulator_init == "ones":
            for v in self._velocities:
                v.assign(keras.ops.ones_like(v))

    def get_config(self):
        return dict(super().get_config(), accumulator_init=self.accumulator_init)


@keras.saving.register_keras_serializable(package="cmr_tf")
class TorchAdam(keras.optimizers.Adam):
    """`torch.optim.Adam`'s update: epsilon added to the bias-corrected sqrt(v).

    Keras (and TF1) add epsilon to the uncorrected sqrt(v) and fold the bias correction into the
    rate, i.e. epsilon is effectively sqrt(1 - beta_2^t) times larger in PyTorch's terms; from equal
    weights the hashing release's PyTorch Adam and Keras' drift apart by up to 6.9e-4 over 165 steps
    for that alone (docs/cmhash.md).
    """

    def update_step(self, gradient, variable, learning_rate):
        lr = keras.ops.cast(learning_rate, variable.dtype)
        gradient = keras.ops.cast(gradient, variable.dtype)
        step = keras.ops.cast(self.iterations + 1, variable.dtype)
        beta_1_power = keras.ops.power(keras.ops.cast(self.beta_1, variable.dtype), step)
        beta_2_power = keras.ops.power(keras.ops.cast(self.beta_2, variable.dtype), step)
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        self.assign_add(m, keras.ops.multiply(keras.ops.subtract(gradient, m), 1 - self.beta_1))
        self.assign_add(v, keras.ops.multiply(keras.ops.subtract(keras.ops.square(gradient), v), 1 - self.beta_2))
        m_hat = keras.ops.divide(m, 1 - beta_1_power)
        v_hat = keras.ops.divide(v, 1 - beta_2_power)
        self.assign_sub(variable, keras.ops.divide(keras.ops.multiply(m_hat, lr),
                                                   keras.ops.add(keras.ops.sqrt(v_hat), self.epsilon)))
