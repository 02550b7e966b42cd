"""The commands the README, docs/ and the code's docstrings and messages show name programs and
flags that exist (a renamed flag would otherwise leave a copied command failing with "Unknown
command line flag")."""

import glob
import importlib
import json
import os
import re
import sys

from absl import flags

from common import cli, run  # noqa: F401  (run: absl's logging flags are defined before the baseline)
from tests import launch
from tests.conftest import REPO

COMMAND = re.compile(r"(?:python3? -m|\bcmr)\s+[^`\n|]*")
PACKAGES = ("acmr_tf", "jfse_tf", "zscrgan_tf", "cmhash_tf", "common", "tools")
ALWAYS = {"help", "helpfull", "helpshort", "flagfile", "version"}


def _flags_of(module: str, cache: dict) -> set:
    """The flags `python -m module` parses: its define_flags(), or those its import defines."""
    if module not in cache:
        before = set(flags.FLAGS)
        mod = importlib.import_module(module)
        target = mod
        if not hasattr(mod, "define_flags") and hasattr(mod, "cli"):  # an alias (jfse_tf.demo, zscrgan_tf.run_exp)
            target = importlib.import_module(mod.cli.__module__)
        if hasattr(target, "define_flags"):
            target.define_flags()
        cache[module] = set(flags.FLAGS)
        for name in cache[module] - before:  # the next program defines its own
            delattr(flags.FLAGS, name)
    return cache[module]


def _logical_lines(lines):
    """(first line number, text) with shell continuations (a trailing backslash) joined."""
    held, first = [], None
    for number, line in enumerate(lines, 1):
        first = first or number
        if line.rstrip().endswith("\\"):
            held.append(line.rstrip()[:-1])
            continue
        yield first, " ".join(held + [line])
        held, first = [], None


def _commands():
    programs = {f"train {k}": v[0] for k, v in cli.TRAIN.items()} | {k: v[0] for k, v in cli.TOOLS.items()}
    code = [p for pkg in PACKAGES for p in sorted(glob.glob(os.path.join(REPO, pkg, "*.py")))]  # docstrings, --help texts, messages
    for path in ["README.md"] + sorted(glob.glob(os.path.join(REPO, "docs", "*.md"))) + code:
        with open(os.path.join(REPO, path), encoding="utf-8") as f:
            for number, line in _logical_lines(f.read().split("\n")):
                for match in COMMAND.finditer(line):
                    words = match.group(0).split()
                    where = f"{os.path.basename(path)}:{number}"
                    if words[0] == "cmr":
                        key = " ".join(words[1:3]) if words[1:2] == ["train"] else " ".join(words[1:2])
                        if re.fullmatch(r"(train )?[a-z][a-z0-9-]*", key) and key != "train":  # not a template
                            yield where, programs.get(key, f"unknown command {key!r}"), words
                    elif len(words) > 2 and words[2].split(".")[0] in PACKAGES:
                        yield where, words[2], words


def check() -> tuple[list, list]:
    """(problems, programs checked); run in a fresh process: it defines and removes every program's flags."""
    cache, wrong, seen = {}, [], set()
    for where, module, words in _commands():
        if module.startswith("unknown command"):
            wrong.append(f"{where}: {module}")
            continue
        if not importlib.util.find_spec(module.split(".")[0]) or importlib.util.find_spec(module) is None:
            wrong.append(f"{where}: no module {module}")
            continue
        seen.add(module)
        defined = _flags_of(module, cache)
        for word in words:
            if word.startswith("--") and len(word) > 2:
                name = word[2:].split("=")[0].rstrip(",.;:)'\"")
                if name not in ALWAYS and name not in defined and not (name[:2] == "no" and name[2:] in defined):
                    wrong.append(f"{where}: {module} has no --{name}")
    return wrong, sorted(seen)


def test_documented_commands_use_existing_programs_and_flags():
    res = launch.run([sys.executable, "-c",
                      "import json; from tests.test_docs import check; print(json.dumps(check()))"],
                     cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    wrong, seen = json.loads(res.stdout.splitlines()[-1])
    assert not wrong, "\n".join(wrong)
    # the check reached the programs it is for
    assert {"acmr_tf.train", "jfse_tf.demo", "zscrgan_tf.train", "cmhash_tf.train", "tools.export",
            "tools.search", "tools.report"} <= set(seen), seen


def test_the_python_example_of_the_design_page_runs(tmp_path):
    """docs/design.md's 'Using a method from Python' block, as written (in a scratch folder)."""
    with open(os.path.join(REPO, "docs", "design.md"), encoding="utf-8") as f:
        page = f.read()
    block = page.split("### Using a method from Python", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    res = launch.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                     env=dict(os.environ, PYTHONPATH=REPO))
    assert res.returncode == 0, res.stderr[-2000:]
    test, i2t = res.stdout.strip().splitlines()[-1].rsplit(" ", 1)
    assert "i2t_map_at_50" in test and 0.0 < float(i2t) <= 1.0
    assert os.path.exists(tmp_path / "runs" / "acmr_py" / "checkpoints" / "checkpoint")
