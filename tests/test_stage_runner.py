"""The forked command runner (tests/stage_runner.py) answers as ``python -m dfa`` does."""
from __future__ import annotations

from stage_runner import needs_interpreter, run_command
from tests.conftest import REPO, cli_env


def test_a_forked_command_answers_as_a_fresh_interpreter(tmp_path):
    (tmp_path / "params.yaml").write_bytes((REPO / "params.yaml").read_bytes())
    fresh_env = {**cli_env(), "DFA_TEST_FORK": "0"}
    for args in (("config", "--format", "yaml", "-S", "ot.epsilon=0.2"),      # exit 0, YAML on stdout
                 ("config", "-S", "ot.no_such_key=1"),                         # exit 2, one line on stderr
                 ("train", "--params", "missing.yaml")):                       # a missing file, exit 2
        forked = run_command(args, tmp_path, cli_env(), timeout=300)
        fresh = run_command(args, tmp_path, fresh_env, timeout=300)
        assert (forked.returncode, forked.stdout, forked.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr), args
    assert forked.returncode == 2 and forked.stderr.startswith("dfa train: error:")


def test_what_a_fresh_interpreter_decides_is_not_forked():
    env = {"PATH": "/usr/bin"}
    assert not needs_interpreter(("train", "--smoke"), env)
    assert needs_interpreter(("train", "--portable"), env)
    for key in ("PYTHONHASHSEED", "DFA_PORTABLE", "ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA"):
        assert needs_interpreter(("train",), {**env, key: "1"}), key
    assert needs_interpreter(("train",), {**env, "DFA_TEST_FORK": "0"})
