"""The suite's launcher (tests/launch.py) runs the same program a fresh `python` does: same exit
status, same output, same results; and it falls back to a fresh process where a fork cannot be
the same (verbose runs, load-time variables, other preexec functions)."""

import json
import os
import signal
import subprocess
import sys

import pytest

from tests import launch
from tests.conftest import REPO, user_env

SCRIPTS = [
    ("exit-status", "import sys; print('out', end=''); sys.stderr.write('err'); sys.exit(3)"),
    ("exit-message", "raise SystemExit('stopped: ' + __name__)"),
    ("traceback", "def f():\n    raise ValueError('bad')\nf()"),
    ("exit-handler", "import atexit, sys; atexit.register(lambda: print('handler', sys.argv[1:]))"),
    ("thread-joined", "import threading, time\n"
                      "threading.Thread(target=lambda: (time.sleep(0.3), print('late'))).start()"),
    ("keyboard-interrupt", "raise KeyboardInterrupt"),
    ("environment", "import os, tempfile; print(os.getcwd(), os.environ['CASE'], tempfile.gettempdir())"),
]


forks = pytest.mark.skipif(os.environ.get(launch.FRESH_ENV, "") not in ("", "0"),
                           reason=f"{launch.FRESH_ENV} is set: every launch is a fresh process")


def _both(cmd, tmp_path, **kw):
    env = user_env(CASE="x", TMPDIR=str(tmp_path))
    forked = launch.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    assert forked._sub is None  # it was forked, not started
    out, err = forked.communicate(timeout=120)
    fresh = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, **kw)
    return (forked.returncode, out, err), (fresh.returncode, fresh.stdout, fresh.stderr)


@forks
@pytest.mark.parametrize("script", [s[1] for s in SCRIPTS], ids=[s[0] for s in SCRIPTS])
def test_a_forked_script_exits_as_a_fresh_interpreter(tmp_path, script):
    forked, fresh = _both([sys.executable, "-c", script, "a", "b"], tmp_path)
    assert forked == fresh


@forks
def test_a_forked_run_is_the_fresh_run(tmp_path):
    """A short ACMR run and a refused rerun: the same lines, results and exit statuses."""
    runs = {}
    for way in ("forked", "fresh"):
        cmd = [sys.executable, "-m", "acmr_tf.train", "--epochs", "1", "--nojit_compile", "--seed", "2",
               "--output_dir", str(tmp_path / way / "run")]
        if way == "forked":
            res = launch.run(cmd, cwd=tmp_path, env=user_env(), capture_output=True, text=True, timeout=300)
            again = launch.run(cmd[:-2] + ["--lr", "0.5"] + cmd[-2:], cwd=tmp_path, env=user_env(),
                               capture_output=True, text=True, timeout=300)
        else:
            res = subprocess.run(cmd, cwd=tmp_path, env=user_env(), capture_output=True, text=True, timeout=300)
            again = subprocess.run(cmd[:-2] + ["--lr", "0.5"] + cmd[-2:], cwd=tmp_path, env=user_env(),
                                   capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        results = json.loads((tmp_path / way / "run" / "results.json").read_text())
        lines = [line for line in res.stdout.splitlines() if "mAP" in line]
        runs[way] = (lines, {k: v for k, v in results.items() if "map" in k}, res.stderr,
                     again.returncode, again.stderr.replace(f"/{way}/", "/WAY/"))
    assert runs["forked"][1] and runs["forked"] == runs["fresh"]
    assert runs["forked"][3] == 2


@forks
def test_a_signal_reaches_the_forked_child(tmp_path):
    proc = launch.Popen([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"], cwd=tmp_path,
                        env=user_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc._sub is None and proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == -signal.SIGTERM
    with pytest.raises(subprocess.TimeoutExpired):
        launch.run([sys.executable, "-c", "import time; time.sleep(60)"], env=user_env(), timeout=1)


@pytest.mark.parametrize("change", ["verbose", "verbosity", "load-time", "pythonpath", "preexec", "asked"])
def test_what_a_fork_cannot_show_runs_fresh(monkeypatch, change):
    env, cmd, kw = user_env(), [sys.executable, "-c", "pass"], {}
    if change == "verbose":
        env["CMR_VERBOSE"] = "1"
    elif change == "verbosity":
        cmd.append("--verbosity=0")
    elif change == "load-time":
        env["TF_ENABLE_ONEDNN_OPTS"] = "0"
    elif change == "pythonpath":
        env["PYTHONPATH"] = os.path.join(REPO, "tests")
    elif change == "preexec":
        kw["preexec_fn"] = os.getpid
    else:
        monkeypatch.setenv(launch.FRESH_ENV, "1")
    proc = launch.Popen(cmd, env=env, **kw)
    assert proc._sub is not None and proc.wait(timeout=60) == 0
