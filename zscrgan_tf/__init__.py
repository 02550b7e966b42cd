"""ZSCRGAN (CIKM 2020); spec ../shared/specs/zscrgan.md. `python -m zscrgan_tf.train` (or `zscrgan_tf.run_exp`)."""
