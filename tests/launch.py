"""Entry points run as a user runs them (`python -m module args`, `python -c code`), without paying
TensorFlow's import in every one: most launches are forked from a warm process of this worker that
has imported TensorFlow and Keras the way a default run does (quietly) and nothing else.

Why: importing TensorFlow costs about 6 s of CPU on the CI machine kind, and the suite runs a few
hundred entry points; forking them took the suite from 21 to 15 minutes there (2026-12-01, before
other cuts). What the child does after the fork is the real
program: the project's modules, flag parsing and run are fresh in it, its environment, folder,
arguments and standard streams are the test's, and it exits like an interpreter (exit handlers, the
status of SystemExit, a traceback for an uncaught error).

What a forked child cannot show is TensorFlow's import itself: its load-time banners, and the
effect of environment variables read at import. So a launch is a fresh process when its environment
asks for library output (CMR_VERBOSE, --verbosity), gives a variable read at load (TF_*, XLA_*,
CUDA_*, OMP_*, KMP_*, MKL_*, KERAS_*, PYTHON*, HOME; not TF_CONFIG) another value than the suite's
own environment has (TF_CPP_MIN_LOG_LEVEL 2 or 3 counts as the default run's 3), sets another
PYTHONPATH, uses a preexec_fn other than `as_in_a_terminal`, or when CMR_TESTS_FRESH_PROCESSES=1
(every launch fresh: the way to check that the two agree; tests/test_launch.py does that for a
few commands).
"""

from __future__ import annotations

import functools
import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRESH_ENV = "CMR_TESTS_FRESH_PROCESSES"
# what TensorFlow, Keras or the interpreter may read before the fork (Keras reads ~/.keras at import)
_AT_LOAD = ("TF_", "XLA_", "CUDA_", "OMP_", "KMP_", "MKL_", "TENSORFLOW_", "KERAS_", "PYTHON", "HOME")


def _load_time_env(env: dict) -> dict:
    return {k: v for k, v in env.items() if k.startswith(_AT_LOAD) and k not in ("TF_CONFIG", "PYTHONPATH")}


@functools.lru_cache(maxsize=None)
def _warm_env() -> dict:
    """The environment the warm process imports TensorFlow in: this worker's when first asked (a
    later change, e.g. a test's monkeypatch, is a difference from it), as a default run sees it
    (common.run.quiet sets TF_CPP_MIN_LOG_LEVEL=3 before the import unless verbose)."""
    env = {k: v for k, v in os.environ.items() if k != "CMR_VERBOSE"}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    return env


def _forkable(cmd, env, preexec_fn) -> bool:
    from tests.conftest import as_in_a_terminal

    if os.environ.get(FRESH_ENV, "") not in ("", "0"):
        return False
    if len(cmd) < 3 or cmd[0] != sys.executable or cmd[1] not in ("-m", "-c"):
        return False
    if preexec_fn not in (None, as_in_a_terminal):
        return False
    env = os.environ if env is None else env
    if env.get("CMR_VERBOSE", "") not in ("", "0") or any(str(a).startswith("--verbosity") for a in cmd):
        return False
    if env.get("PYTHONPATH", REPO) != REPO:
        return False
    load = _load_time_env(env)
    if load.get("TF_CPP_MIN_LOG_LEVEL", "3") in ("2", "3"):  # 2: the suite's own setting; C++ errors only
        load["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return load == _load_time_env(_warm_env())


# --------------------------------------------------------------------------- the test's side

class _Warm:
    """The warm process of this pytest worker, and the exit statuses it has reported."""

    instance = None

    def __init__(self):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.log = tempfile.TemporaryFile()  # its own output (TensorFlow's load-time lines), shown if it fails
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.launch", str(theirs.fileno())], cwd=REPO,
                                     env=dict(_warm_env()), pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=self.log)
        theirs.close()
        self.sock = ours
        self.exited = {}

    @classmethod
    def get(cls) -> "_Warm":
        if cls.instance is None or cls.instance.proc.poll() is not None:
            cls.instance = cls()
        return cls.instance

    def _receive(self, timeout):
        import select

        if not select.select([self.sock], [], [], timeout)[0]:
            return None
        msg = self.sock.recv(1 << 16)
        if not msg:
            self.log.seek(0)
            raise RuntimeError(f"the warm process of tests/launch.py ended (exit {self.proc.wait()}): "
                               f"{self.log.read().decode(errors='replace')[-3000:]}")
        kind, pid, value = pickle.loads(msg)
        if kind == "exit":
            self.exited[pid] = value
        return kind, pid, value

    def spawn(self, request: dict, fds: list) -> int:
        socket.send_fds(self.sock, [pickle.dumps(request)], fds)
        while True:
            got = self._receive(120)
            if got is None:
                raise RuntimeError("the warm process of tests/launch.py did not answer")
            if got[0] == "started":
                return got[1]
            if got[0] == "failed":
                raise OSError(got[2])

    def status(self, pid: int, timeout=None):
        """The child's wait status, or None if it is still running after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while pid not in self.exited:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if self._receive(left) is None and deadline is not None:
                return None
        return self.exited[pid]


class Popen:
    """The part of `subprocess.Popen` the suite uses (pid, poll, wait, communicate, send_signal,
    kill, returncode); a captured stream is a temporary file read when the child has ended, so a
    test cannot read it line by line while the child runs (those tests use subprocess itself)."""

    def __init__(self, cmd, cwd=None, env=None, stdout=None, stderr=None, text=False, preexec_fn=None, stdin=None):
        from tests.conftest import as_in_a_terminal

        cmd = [str(c) for c in cmd]
        self.args, self.text, self.returncode = cmd, text, None
        self._sub = None
        if not _forkable(cmd, env, preexec_fn) or stdin not in (None, subprocess.DEVNULL):
            self._sub = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=stdout, stderr=stderr, text=text,
                                         preexec_fn=preexec_fn, stdin=stdin)
            self.pid = self._sub.pid
            return
        self._files, fds = {}, []
        for name, how in (("stdin", subprocess.DEVNULL), ("stdout", stdout), ("stderr", stderr)):
            if how == subprocess.PIPE:
                self._files[name] = tempfile.TemporaryFile()
                fds.append(self._files[name].fileno())
            elif how == subprocess.DEVNULL:
                fds.append(os.open(os.devnull, os.O_RDWR))
            elif how is None:
                fds.append(os.dup({"stdin": 0, "stdout": 1, "stderr": 2}[name]))
            else:
                fds.append(os.dup(how if isinstance(how, int) else how.fileno()))
        sigint_default = preexec_fn is as_in_a_terminal or signal.getsignal(signal.SIGINT) != signal.SIG_IGN
        request = {"mode": cmd[1], "target": cmd[2], "args": cmd[3:], "argv0": cmd[0],
                   "cwd": os.path.abspath(cwd or os.getcwd()),
                   "env": dict(os.environ if env is None else env), "sigint": sigint_default}
        self._warm = _Warm.get()
        try:
            self.pid = self._warm.spawn(request, fds)
        finally:
            for name, fd in zip(("stdin", "stdout", "stderr"), fds):
                if name not in self._files:
                    os.close(fd)

    def poll(self):
        return self.wait(timeout=0, _raise=False)

    def wait(self, timeout=None, _raise=True):
        if self._sub is not None:
            try:
                self.returncode = self._sub.wait(timeout)
            except subprocess.TimeoutExpired:
                if _raise:
                    raise
            return self.returncode
        if self.returncode is None:
            status = self._warm.status(self.pid, timeout)
            if status is None:
                if _raise:
                    raise subprocess.TimeoutExpired(self.args, timeout)
                return None
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def _read(self, name):
        f = self._files.get(name)
        if f is None:
            return None
        f.seek(0)
        data = f.read()
        f.close()
        return data.decode() if self.text else data

    def communicate(self, timeout=None):
        if self._sub is not None:
            out = self._sub.communicate(timeout=timeout)
            self.returncode = self._sub.returncode
            return out
        self.wait(timeout)
        return self._read("stdout"), self._read("stderr")

    def send_signal(self, sig):
        if self._sub is not None:
            self._sub.send_signal(sig)
        elif self.returncode is None and self.pid not in self._warm.exited:
            os.kill(self.pid, sig)

    def kill(self):
        self.send_signal(signal.SIGKILL)


def run(cmd, cwd=None, env=None, capture_output=False, text=False, timeout=None, preexec_fn=None):
    """`subprocess.run` for the suite's entry-point commands (see the module docstring)."""
    pipe = subprocess.PIPE if capture_output else None
    proc = Popen(cmd, cwd=cwd, env=env, stdout=pipe, stderr=pipe, text=text, preexec_fn=preexec_fn)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess([str(c) for c in cmd], proc.returncode, out, err)


# --------------------------------------------------------------------------- the warm process

def _child(request: dict, fds: list, sock: socket.socket, wakeup: tuple) -> None:
    """Become the program the test asked for, then exit as the interpreter would."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler if request["sigint"] else signal.SIG_IGN)
        sock.close()
        for fd in wakeup:
            os.close(fd)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        import random

        import numpy as np

        tempfile.tempdir = None
        random.seed()
        np.random.seed()
        if request["mode"] == "-m":
            import runpy

            sys.argv = [request["argv0"], *request["args"]]  # runpy puts the module's path first
            sys.path[0] = request["cwd"]
            runpy.run_module(request["target"], run_name="__main__", alter_sys=True)
        else:
            sys.argv = ["-c", *request["args"]]
            sys.path[0] = ""
            import types

            main = types.ModuleType("__main__")
            sys.modules["__main__"] = main
            exec(compile(request["target"], "<string>", "exec"), main.__dict__)
        code = 0
    except SystemExit as e:
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt as e:  # as the interpreter does: the traceback, then death by SIGINT
        sys.excepthook(type(e), e, _program_frames(e))
        _exit_handlers()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    except BaseException as e:
        sys.excepthook(type(e), e, _program_frames(e))
        code = 1
    _exit_handlers()
    os._exit(code & 0xFF)


def _program_frames(error):
    """The traceback from the program's first frame: without this launcher's and runpy's (a fresh
    `python -m` shows two lines of "<frozen runpy>" there instead)."""
    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename in (__file__, "<frozen runpy>"):
        tb = tb.tb_next
    error.__traceback__ = tb  # what the interpreter's display shows
    return tb


def _exit_handlers() -> None:
    import atexit
    import threading

    try:
        threading._shutdown()
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass


def _serve(fd: int) -> None:
    import select

    sock = socket.socket(fileno=fd)
    import keras  # noqa: F401
    import tensorflow  # noqa: F401

    wakeup = os.pipe()
    for end in wakeup:
        os.set_blocking(end, False)
    signal.set_wakeup_fd(wakeup[1])
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the test's Ctrl-C is for its own children

    def reap():
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            sock.send(pickle.dumps(("exit", pid, status)))

    while True:
        ready = select.select([sock, wakeup[0]], [], [])[0]
        if wakeup[0] in ready:
            try:
                while os.read(wakeup[0], 512):
                    pass
            except BlockingIOError:
                pass
            reap()
        if sock in ready:
            msg, fds, _, _ = socket.recv_fds(sock, 1 << 20, 3)
            if not msg:  # the test process has gone
                return
            sys.stdout.flush()
            sys.stderr.flush()
            try:
                pid = os.fork()
            except OSError as e:
                sock.send(pickle.dumps(("failed", 0, str(e))))
                continue
            if pid == 0:
                _child(pickle.loads(msg), fds, sock, wakeup)
            for f in fds:
                os.close(f)
            sock.send(pickle.dumps(("started", pid, None)))
            reap()


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
