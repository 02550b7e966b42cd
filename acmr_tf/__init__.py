"""ACMR (ACM MM 2017); spec ../shared/specs/acmr.md. `python -m acmr_tf.train`."""
