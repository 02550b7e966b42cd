"""JFSE (TPAMI) / CFSA (SIGIR 2020); spec ../shared/specs/jfse.md. `python -m jfse_tf.train` (or `jfse_tf.demo`)."""
