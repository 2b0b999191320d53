"""The `vfm-transfer` console script works as a user would call it."""
import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

BIN = Path(sys.executable).parent


def run(*args, **kw):
    return subprocess.run([str(BIN / "vfm-transfer"), *args], capture_output=True, text=True, cwd=ROOT, timeout=600, **kw)


def test_help():
    r = run("--help")
    assert r.returncode == 0 and "reproduce" in r.stdout


def test_reproduce_help_lists_profiles():
    r = run("reproduce", "--help")
    assert r.returncode == 0 and "micro" in r.stdout and "paper" in r.stdout


def test_unknown_profile_is_a_usage_error():
    r = run("reproduce", "--profile", "huge")
    assert r.returncode == 2 and "invalid choice: 'huge'" in r.stderr


def test_unknown_experiment_names_the_valid_ones(tmp_path):
    r = run("reproduce", "--profile", "micro", "--only", "no_such_notebook", "--out", str(tmp_path))
    assert r.returncode == 2 and "unknown experiment(s) ['no_such_notebook']" in r.stderr


def test_make_data_is_a_verb():
    r = run("make-data", "--help")
    assert r.returncode == 0 and "manifest.csv" in r.stdout and "--size" in r.stdout


def test_reproduce_help_says_where_outputs_go():
    r = run("reproduce", "--help")
    assert r.returncode == 0 and "figures-<profile>/" in r.stdout
