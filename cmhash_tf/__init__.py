"""Triplet deep cross-modal hashing (IAPR TC-12, ResNet-18 + BERT); spec ../shared/specs/cmhash.md.

`python -m cmhash_tf.train` (or `cmr train cmhash`).
"""
