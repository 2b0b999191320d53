"""Where outputs go, and that re-running leaves nothing to commit (issue 17).

- `core.default_out_dir` / `figures_root` / `resolve_out_dir`: one folder per notebook, figures/ only for the default
  profile, the artifact cache without a checkout, never the notebook sources.
- A notebook run with its default `out_dir` from inside nbs/experiments/ (as JupyterLab runs it) writes only under its
  own output folder; a second notebook run after it keeps the first one's results.
- `reproduce` twice into a git work tree with the project's .gitignore: nothing tracked changes the second time, and
  a non-default profile's run leaves the tree clean.
- The data/ example: `vfm-transfer make-data` writes NIfTI cases + a manifest that the fine-tuning path reads.
"""
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from vfm_transfer import core
from vfm_transfer.core import DEFAULT_PROFILE, ConfigError, default_out_dir, figures_root, load_profile, resolve_out_dir
from vfm_transfer.reproduce import RUN_LOG, _kernel_name, reproduce

NOTEBOOK_DIR = ROOT / "nbs" / "experiments"
BIN = Path(sys.executable).parent


@pytest.fixture
def figures(tmp_path, monkeypatch):
    "Point the figures/ folder at a temporary one, so nothing here touches the committed figures."
    monkeypatch.setenv(core.FIGURES_ENV, str(tmp_path / "figures"))
    return tmp_path / "figures"


# --- resolution ------------------------------------------------------------------------------------------------

def test_default_profile_writes_figures_others_a_sibling(figures):
    assert default_out_dir("transfer_limits") == figures / "transfer_limits"
    assert default_out_dir("transfer_limits", DEFAULT_PROFILE) == figures / "transfer_limits"
    other = next(p for p in core.PROFILES if p != DEFAULT_PROFILE)
    assert default_out_dir("transfer_limits", other) == figures.parent / f"figures-{other}" / "transfer_limits"
    assert default_out_dir("alignment", load_profile(other)) == figures.parent / f"figures-{other}" / "alignment"
    names = ["transfer_limits", "alignment", "kd_approaches", "kd_compute", "kd_retrieval"]
    assert len({default_out_dir(n, "micro") for n in names}) == len(names)  # no two notebooks share a folder


def test_checkout_gives_its_figures_folder(monkeypatch):
    monkeypatch.delenv(core.FIGURES_ENV, raising=False)
    assert core.checkout_root() == ROOT
    assert figures_root() == ROOT / "figures"
    assert figures_root("micro") == ROOT / "figures-micro"


def test_without_a_checkout_outputs_go_to_the_cache(monkeypatch, tmp_path):
    # a wheel install: the package is not in a checkout and the working folder is not in one either
    monkeypatch.delenv(core.FIGURES_ENV, raising=False)
    monkeypatch.setattr(core, "checkout_root", lambda: None)
    monkeypatch.setenv("VFM_TRANSFER_CACHE", str(tmp_path / "cache"))
    assert default_out_dir("kd_compute") == tmp_path / "cache" / "figures" / "kd_compute"
    assert default_out_dir("kd_compute", "paper") == tmp_path / "cache" / "figures-paper" / "kd_compute"


def test_resolve_refuses_the_notebook_sources_and_announces(figures, capsys, monkeypatch):
    monkeypatch.chdir(NOTEBOOK_DIR)
    with pytest.raises(ConfigError, match="is inside the notebook sources"):
        resolve_out_dir(".", "kd_compute", "micro")  # the old default, from JupyterLab's working folder
    d = resolve_out_dir(None, "kd_compute", "micro")
    assert d == figures.parent / "figures-micro" / "kd_compute" and d.is_dir()
    assert str(d) in capsys.readouterr().out
    with pytest.raises(ConfigError, match="notebook name"):
        default_out_dir("")


def test_ignore_rules_cover_what_is_not_committed():
    paths = ["figures-micro/transfer_limits/metrics.json", "figures-tiny/MANIFEST.json", "figures/MANIFEST.run.json",
             "figures/transfer_limits/transfer_limits.ipynb", "data/demo/manifest.csv", "data/checkpoints/x.pth"]
    kept = ["figures/MANIFEST.json", "figures/transfer_limits/metrics.json", "data/README.md", "data/example_manifest.csv"]
    r = subprocess.run(["git", "check-ignore", "--no-index", *paths, *kept], cwd=ROOT, capture_output=True, text=True)
    assert sorted(r.stdout.split()) == sorted(paths), r.stdout


# --- a notebook run as JupyterLab runs it -------------------------------------------------------------------------

def _files(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _run_in_place(name: str, log: Path):
    "Run `name` with papermill from nbs/experiments/ with only profile=micro injected: out_dir keeps its default."
    import papermill as pm
    pm.execute_notebook(str(NOTEBOOK_DIR / f"{name}.ipynb"), str(log), parameters={"profile": "micro"},
                        kernel_name=_kernel_name(None), cwd=str(NOTEBOOK_DIR), progress_bar=False, log_output=False)
    return json.loads(log.read_text())


def test_notebooks_run_in_place_write_only_their_own_folders(figures, tmp_path):
    before = {str(p.relative_to(ROOT / "nbs")) for p in (ROOT / "nbs").rglob("*")}
    ran = {}
    for name in ("kd_retrieval", "kd_compute"):  # one after the other, both with the default out_dir
        nb = _run_in_place(name, tmp_path / f"{name}.executed.ipynb")
        ran[name] = _files(figures.parent / "figures-micro" / name)
        printed = "".join("".join(o.get("text", "")) for c in nb["cells"] if c["cell_type"] == "code"
                          for o in c.get("outputs", []))
        assert str(figures.parent / "figures-micro" / name) in printed, "the notebook does not say where outputs go"
    after = {str(p.relative_to(ROOT / "nbs")) for p in (ROOT / "nbs").rglob("*")}
    assert after == before, f"written into nbs/: {sorted(after - before)}"
    assert sorted(p.name for p in figures.parent.iterdir()) == ["figures-micro", "kd_compute.executed.ipynb",
                                                                "kd_retrieval.executed.ipynb"]
    assert sorted(p.name for p in (figures.parent / "figures-micro").iterdir()) == ["kd_compute", "kd_retrieval"]
    for name, files in ran.items():
        assert {"metrics.json", "outputs.json"} <= set(files) and any(f.endswith(".png") for f in files), name
    # the second notebook did not touch the first one's results
    assert _files(figures.parent / "figures-micro" / "kd_retrieval") == ran["kd_retrieval"]
    rec = {r["name"] for r in json.loads(ran["kd_retrieval"]["outputs.json"])}
    assert "size_table" in rec and "compute_table" not in rec


# --- reproduce twice: nothing to commit -------------------------------------------------------------------------

def _git(repo: Path, *args) -> str:
    r = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, capture_output=True,
                       text=True, check=True)
    return r.stdout


def test_reproduce_twice_leaves_no_diff(tmp_path, monkeypatch):
    monkeypatch.setenv("VFM_TRANSFER_CACHE", str(tmp_path / "cache"))  # cold first run, as on a fresh clone
    repo = tmp_path / "clone"
    repo.mkdir()
    shutil.copy(ROOT / ".gitignore", repo / ".gitignore")
    _git(repo, "init", "-q")
    monkeypatch.setenv(core.FIGURES_ENV, str(repo / "figures"))
    only = ["kd_compute", "kd_retrieval"]
    # the committed figures: this test treats micro as if it were the default profile by naming figures/ explicitly
    recs = reproduce("micro", repo / "figures", only=only, notebooks=NOTEBOOK_DIR, echo=lambda *a: None)
    assert all(r["status"] == "ok" for r in recs), [(r["notebook"], r.get("error")) for r in recs]
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "first run")
    tracked = _git(repo, "ls-files").split()
    assert "figures/MANIFEST.json" in tracked and "figures/kd_compute/metrics.json" in tracked
    assert not [t for t in tracked if t.endswith(".ipynb") or t.endswith(RUN_LOG)], tracked
    run1 = json.loads((repo / "figures" / RUN_LOG).read_text())

    recs = reproduce("micro", repo / "figures", only=only, notebooks=NOTEBOOK_DIR, echo=lambda *a: None)
    assert all(r["status"] == "ok" for r in recs)
    assert _git(repo, "status", "--porcelain") == "", "re-running reproduce changed committed files"
    # the volatile fields exist, they just live in the ignored sibling
    run2 = json.loads((repo / "figures" / RUN_LOG).read_text())
    assert set(run2["notebooks"]) == set(only) and all(math.isfinite(v["seconds"]) for v in run2["notebooks"].values())
    assert run1["notebooks"]["kd_compute"]["finished"] <= run2["notebooks"]["kd_compute"]["finished"]
    man = json.loads((repo / "figures" / "MANIFEST.json").read_text())
    assert not {"commit", "seconds"} & {k for o in man["outputs"] for k in o} and "commit" not in man
    assert all("out_dir" not in o["parameters"] for o in man["outputs"])

    # a non-default profile without --out writes its own ignored folder: the tree stays clean
    recs = reproduce("micro", only=["kd_retrieval"], notebooks=NOTEBOOK_DIR, echo=lambda *a: None)
    assert recs[0]["status"] == "ok" and (repo / "figures-micro" / "kd_retrieval" / "metrics.json").is_file()
    assert _git(repo, "status", "--porcelain") == ""


# --- the data/ example at micro sizes ------------------------------------------------------------------------------

def test_example_manifest_has_the_supported_columns():
    import csv
    from vfm_transfer.data import MANIFEST_COLUMNS, MASK_COLUMNS
    with open(ROOT / "data" / "example_manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [*MANIFEST_COLUMNS, *MASK_COLUMNS, "label", "split"]
    assert {r["split"] for r in rows} == {"train", "val", "test", "unlabeled"}
    assert {r["label"] for r in rows} == {"0", "1", ""}


def test_make_data_then_finetune_on_it(tmp_path):
    from vfm_transfer.finetune import run_finetune
    r = subprocess.run([str(BIN / "vfm-transfer"), "make-data", str(tmp_path / "demo"), "--n", "12", "--size", "16"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    manifest = tmp_path / "demo" / "manifest.csv"
    assert manifest.is_file() and len(list((tmp_path / "demo").glob("*.nii.gz"))) == 12 * 5
    assert str(manifest) in r.stdout
    p = load_profile("micro", manifest=str(manifest))
    # "mae" is pretrained in-run on the manifest's unlabeled cases, then fine-tuned on its train split
    h = run_finetune("classification", "mae", p, run_dir=tmp_path / "run", verbose=False)
    assert math.isfinite(h.meta["test"]["auc"])
    h = run_finetune("segmentation", "scratch", p, run_dir=tmp_path / "seg", verbose=False)
    assert math.isfinite(h.meta["test"]["dice"])
    bad = subprocess.run([str(BIN / "vfm-transfer"), "make-data", str(tmp_path / "x"), "--n", "3"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "n must be an int >= 12" in bad.stderr
