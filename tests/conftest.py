"""Shared fixtures: the optional real-data folder and quiet, isolated TF/TFDS state."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import re  # noqa: E402

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# TensorFlow / absl log lines a default run must not print (glog prefixes, banners, CUDA probes)
NOISE = re.compile(r"^([IWEF]\d{4} |WARNING|INFO|.*absl::InitializeLog|.*cuInit)")


def user_env(**extra) -> dict:
    """The environment a user's shell has: none of the suite's log silencing, no cluster, not verbose."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_CONFIG", "CMR_VERBOSE")}
    env.update(PYTHONPATH=REPO, **extra)
    return env


def as_in_a_terminal() -> None:
    """`preexec_fn` of a child that a test stops with SIGINT: Ctrl-C reaches a run started from a
    terminal, but a suite started as a shell's background job (`cmd &` in a script) runs with SIGINT
    ignored, and its children inherit that."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def noise(stderr: str) -> list:
    return [line for line in stderr.splitlines() if NOISE.match(line)]


def pytest_configure(config):
    # Keras 3.15 converts TensorFlow tensors with np.array(x, copy=False), which NumPy 2 deprecates for
    # types whose __array__ lacks `copy` (about 300 identical lines per run, none from this project)
    config.addinivalue_line("filterwarnings", "ignore:__array__ implementation doesn't accept a copy keyword"
                                              ":DeprecationWarning:keras")


@pytest.fixture(scope="session", autouse=True)
def _own_temporary_folder(tmp_path_factory):
    """What the libraries put in `tempfile`'s folder inside this process (TFDS's empty metadata
    folders, a worker's throwaway checkpoints) goes to one folder removed when the session ends, not
    to the user's /tmp. pytest's own folders (kept for debugging) are made before it moves."""
    import shutil
    import tempfile

    tmp_path_factory.getbasetemp()
    before, tempfile.tempdir = tempfile.tempdir, tempfile.mkdtemp(prefix="cmr-tests-")
    yield
    shutil.rmtree(tempfile.tempdir, ignore_errors=True)
    tempfile.tempdir = before


@pytest.fixture(autouse=True)
def _tfds_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CMR_TFDS_DIR", str(tmp_path / "tfds_cache"))


@pytest.fixture
def shared_data():
    """`$CMR_SHARED_DATA` (CI: ../shared/data); tests using it skip cleanly without it."""
    path = os.environ.get("CMR_SHARED_DATA")
    if not path or not os.path.isdir(path):
        pytest.skip("CMR_SHARED_DATA is not set or missing: real-data test skipped")
    return path
