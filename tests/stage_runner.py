"""``dfa`` commands for the tests, each in its own process forked from a preloaded server.

A smoke stage is almost all start-up: cProfile of ``python -m dfa train --smoke`` (2026-12-03,
10.2 s) found 6.0 s importing torch, open_clip (which pulls in torchvision and torch._dynamo)
and MLflow, 1.2 s opening the MLflow store, and well under a second of training. The suite runs
about a hundred such commands. multiprocessing's ``forkserver`` imports those libraries once per
test worker (``PRELOAD``); each command then runs in a fresh fork of that server, as its own
process: its own exit code, environment, working folder and output files, and no state left by
an earlier command (the server never runs one). Only the interpreter's start is shared.

What only a fresh interpreter decides still gets one, ``python -m dfa`` as a user runs it: a
``PYTHONHASHSEED`` or a kernel pin (``DFA_PORTABLE``, ``--portable``, ``dfa.kernels.KERNEL_VARS``)
in the environment, or ``DFA_TEST_FORK=0`` (every command then starts its own interpreter).
"""
from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

from dfa.kernels import KERNEL_VARS   # no torch import: the pins must precede it

PRELOAD = ["torch", "torchvision", "open_clip", "mlflow", "mlflow.tracking", "optuna"]
# Read when python starts or when torch loads: a command that sets one needs its own interpreter.
FRESH_ENV = ("PYTHONHASHSEED", "DFA_PORTABLE", *KERNEL_VARS)

_context = None


def _server():
    """The forkserver context, started on first use with the heavy imports done."""
    global _context
    if _context is None:
        # OpenMP reads its settings when torch loads, so the server must load it with the suite's.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def needs_interpreter(args: tuple[str, ...], env: dict[str, str]) -> bool:
    return (env.get("DFA_TEST_FORK") == "0" or "--portable" in args
            or any(env.get(k) not in (None, "") for k in FRESH_ENV))


def _command(args: tuple[str, ...], cwd: str, env: dict[str, str], out: str, err: str) -> None:
    """The forked child: ``python -m dfa <args>`` without the interpreter start."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, out), (2, err)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    sys.argv = [str(Path(cwd) / "dfa"), *args]
    code = 1
    try:
        from dfa.cli import main
        code = main(list(args))
    except SystemExit as exc:   # as the interpreter maps it: None → 0, an int, anything else printed → 1
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, (int, type(None))):
            print(exc.code, file=sys.stderr)
    except BaseException:      # an uncaught exception: its traceback on stderr, exit 1
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(int(code or 0))


def run_command(args: tuple[str, ...], cwd: Path, env: dict[str, str], timeout: int) -> subprocess.CompletedProcess:
    """``python -m dfa <args>`` in ``cwd`` under ``env``, as ``subprocess.run(capture_output=True, text=True)``."""
    argv = [sys.executable, "-m", "dfa", *args]
    if needs_interpreter(args, env):
        return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    with tempfile.TemporaryDirectory(prefix="dfa-cmd-") as tmp:
        out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
        proc = _server().Process(target=_command, args=(tuple(args), str(cwd), dict(env), out, err))
        proc.start()
        proc.join(timeout)
        if proc.exitcode is None:
            proc.kill()
            proc.join()
            raise subprocess.TimeoutExpired(argv, timeout)
        read = lambda p: Path(p).read_text(errors="replace") if os.path.exists(p) else ""  # noqa: E731
        # exitcode is -N when signal N killed it, as subprocess reports it
        return subprocess.CompletedProcess(argv, proc.exitcode, read(out), read(err))
