"""cmr-tf: TensorFlow 2 / Keras 3 ports of cross-modal retrieval methods, one data and metric layer."""

__version__ = "0.2.0"
