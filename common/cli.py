"""`cmr`: one console script for every entry point (installed by `pip install`).

    cmr train acmr --dataset features --data_dir data/uci     # = python -m acmr_tf.train ...
    cmr train jfse --scenario zs                              # = python -m jfse_tf.train ...
    cmr export --run_dir runs/acmr --out exported/acmr        # = python -m tools.export ...
    cmr search|report|baseline|... --help
    cmr --version

Each command is the same program as its `python -m` form (same flags, outputs and exit codes);
`cmr <command> --help` lists its flags, `--flagfile <run>/flags.txt` repeats a run.
"""

from __future__ import annotations

import difflib
import importlib
import sys

TRAIN = {
    "acmr": ("acmr_tf.train", "ACMR (ACM MM 2017): adversarial cross-modal retrieval"),
    "jfse": ("jfse_tf.train", "JFSE / CFSA: coupled cWGAN feature synthesis; standard, zero-shot, GZS"),
    "zscrgan": ("zscrgan_tf.train", "ZSCRGAN (CIKM 2020): zero-shot text -> image retrieval"),
    "cmhash": ("cmhash_tf.train", "triplet-ranking cross-modal hashing (features or end to end)"),
}
TOOLS = {
    "export": ("tools.export", "a run's two encoders as a SavedModel and .keras files"),
    "search": ("tools.search", "cross-modal top-K search with an exported model"),
    "report": ("tools.report", "results.json files next to published numbers; PR curves"),
    "baseline": ("tools.baseline", "regularised CCA (and CCA-then-sign hashing) reference"),
    "class-vectors": ("tools.class_vectors", "GloVe class embeddings from class names"),
    "extract-features": ("tools.extract_features", "images + texts -> a feature folder"),
    "convert-uci": ("tools.convert_uci", "UCI uci_all.mat -> a feature folder"),
    "convert-xlsa17": ("tools.convert_xlsa17", "zero-shot res101.mat + splits -> ZSCRGAN pickles"),
    "extract-iapr": ("cmhash_tf.extract", "IAPR images and texts -> features.npz (ResNet-18 + BERT)"),
    "benchmark": ("tools.benchmark", "training-loop speed against its compute floor"),
}


def usage() -> str:
    lines = ["usage: cmr <command> [flags]   (cmr <command> --help for its flags; cmr --version)", "",
             "train a method:"]
    lines += [f"  cmr train {name:<16} {what}" for name, (_, what) in TRAIN.items()]
    lines += ["", "tools:"]
    lines += [f"  cmr {name:<22} {what}" for name, (_, what) in TOOLS.items()]
    return "\n".join(lines)


def suggestion(word: str, choices, prefix: str = "cmr ") -> str:
    """`; did you mean 'cmr train'?` for a near miss (a typo, or a method named without `train`)."""
    if word in TRAIN and prefix == "cmr ":
        return f"; did you mean 'cmr train {word}'?"
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{prefix}{close[0]}'?" if close else ""


def version() -> str:
    """The project's version and the stack it runs on, without loading TensorFlow."""
    from importlib import metadata

    import common

    def installed(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    stack = ", ".join(f"{name} {installed(name)}" for name in ("tensorflow", "keras", "tensorflow-datasets"))
    return f"cmr-tf {common.__version__} (Python {sys.version.split()[0]}; {stack})"


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:  # a missing command is a usage error, as for `cmr train` without a method
        print(f"error: a command is missing\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    if argv[0] in ("-h", "--help", "help"):
        print(usage())
        return
    if argv[0] == "--version":
        print(version())
        return
    command, rest = argv[0], argv[1:]
    if command == "train":
        if rest and rest[0] in ("-h", "--help", "help"):
            print(usage())
            return
        if not rest or rest[0] not in TRAIN:
            what = f"unknown method {rest[0]!r}" if rest else "a method is missing"
            hint = suggestion(rest[0], TRAIN, "cmr train ") if rest else ""
            print(f"error: cmr train: {what}; one of {', '.join(TRAIN)}{hint}", file=sys.stderr)
            sys.exit(2)
        module, prog, rest = TRAIN[rest[0]][0], f"cmr train {rest[0]}", rest[1:]
    elif command in TOOLS:
        module, prog = TOOLS[command][0], f"cmr {command}"
    else:
        hint = suggestion(command, ["train", *TOOLS])
        print(f"error: unknown command {command!r}{hint}\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    sys.argv = [prog, *rest]
    entry = importlib.import_module(module)
    sys.modules["__main__"].__doc__ = entry.__doc__  # absl's --help shows the main module's docstring
    entry.cli()


if __name__ == "__main__":
    main()
