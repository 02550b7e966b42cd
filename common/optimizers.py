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
