"""Every experiment notebook runs under papermill with the micro profile and writes the metrics it promises.

One `reproduce` run (module-scoped) serves all tests: the notebooks' statuses, their metrics.json, MANIFEST.json.
"""
import json
import math
import os

import pandas as pd
import pytest

from conftest import ROOT
from vfm_transfer.core import ConfigError, load_profile, sha256_file
from vfm_transfer.stats import check_findings
from vfm_transfer.reproduce import list_experiments, reproduce, run_experiment

NOTEBOOKS = ("transfer_limits", "alignment", "kd_approaches", "kd_compute", "kd_retrieval")
NOTEBOOK_DIR = ROOT / "nbs" / "experiments"
STATS_FINDINGS = ("transfer_limits", "alignment", "kd_approaches", "kd_compute", "kd_retrieval")  # notebooks whose findings are `stats.finding` records

# metrics.json keys each notebook must write (the numbers its prose and the README quote)
METRIC_KEYS = {
    "transfer_limits": {"profile", "seeds", "tasks", "inits", "runs", "test_main_metric", "gain", "epochs_to_95",
                        "improvement_auc", "gain_db_over_identity", "ci_half_width", "auc_half_width_budget", "learned",
                        "findings"},
    "alignment": {"profile", "seeds", "distances", "correlations", "findings"},
    "kd_approaches": {"profile", "seeds", "students", "labels_per_class", "accuracy", "accuracy_ci", "segmentation_miou",
                      "baselines", "ci_half_width", "findings"},
    "kd_compute": {"profile", "seeds", "flops", "accuracy", "accuracy_ci", "probe_accuracy", "ci_half_width", "approach_curves",
                   "findings"},
    "kd_retrieval": {"profile", "seeds", "sizes", "accuracy", "accuracy_ci", "transfer_sets", "ci_half_width", "findings"},
}

# tables each notebook saves, with their expected row counts given the micro profile
def _expected_rows(name, m):
    if name == "transfer_limits":  # one row per run of a seed, plus the identity baseline of each restoration task
        return {"test_metrics": len(m["runs"]) + len(m["restoration_tasks"])}
    if name == "alignment": return {"distances": len(m["distances"])}
    return {}


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    # two notebooks at a time and a relative out_dir, as `make reproduce` runs them: a notebook must not move the
    # working folder under another (papermill's cwd= is a process-wide chdir)
    base = tmp_path_factory.mktemp("run")
    here, real_chdir = os.getcwd(), os.chdir
    real_chdir(base)
    os.chdir = lambda path: (CHDIR_CALLS.append(str(path)), real_chdir(path))[1]  # record, then do it
    try:
        records = reproduce("micro", "figures", only=list(NOTEBOOKS), jobs=2, notebooks=NOTEBOOK_DIR, echo=lambda *a: None)
    finally:
        os.chdir = real_chdir
        real_chdir(here)
    return base / "figures", {r["notebook"]: r for r in records}


CHDIR_CALLS: list[str] = []  # os.chdir calls made while the micro fixture's reproduce ran


def test_parallel_notebooks_write_only_their_own_folders(micro):
    out, _ = micro
    # a chdir anywhere in the process moves every thread's relative paths: notebooks running side by side must not
    # (papermill's file handler re-enters the folder reproduce started in around each read and write: harmless)
    moved = [c for c in CHDIR_CALLS if c != str(out.parent)]
    assert not moved, f"reproduce moved the process's working folder {len(moved)} times, first: {moved[:4]}"
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(NOTEBOOKS)
    nested = [str(p) for name in NOTEBOOKS for p in (out / name).iterdir() if p.is_dir()]
    assert not nested, f"outputs written under another notebook's folder: {nested}"


def _finite(x, path="metrics"):
    "Every number inside x (nested dicts/lists) is finite; returns the offending path or None."
    if isinstance(x, bool) or x is None or isinstance(x, str): return None
    if isinstance(x, (int, float)): return None if math.isfinite(x) else path
    if isinstance(x, dict):
        for k, v in x.items():
            bad = _finite(v, f"{path}.{k}")
            if bad: return bad
    if isinstance(x, list):
        for i, v in enumerate(x):
            bad = _finite(v, f"{path}[{i}]")
            if bad: return bad
    return None


def test_all_notebooks_listed():
    assert set(NOTEBOOKS) <= set(list_experiments(NOTEBOOK_DIR))


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_and_writes_metrics(micro, name):
    out, recs = micro
    rec = recs[name]
    assert rec["status"] == "ok", f"{name} failed: {rec.get('error')}; executed notebook: {rec['executed']}"
    m = json.loads((out / name / "metrics.json").read_text())
    missing = METRIC_KEYS[name] - set(m)
    assert not missing, f"{name}/metrics.json lacks {sorted(missing)}"
    bad = _finite({k: m[k] for k in METRIC_KEYS[name]})
    assert bad is None, f"{name}/metrics.json has a non-finite value at {bad}"
    if name in STATS_FINDINGS:  # findings in the stats schema: claim, verdict from the CI, effect, ci, n_seeds, n_test
        assert m["findings"] and check_findings(m["findings"]) and m["profile"] == "micro"
        assert m["seeds"] == list(load_profile("micro").seeds)
        assert all(f["n_seeds"] == len(m["seeds"]) for f in m["findings"]), m["findings"]
    else:
        # a finding is yes/no, or None where the numbers cannot decide it (e.g. a constant variable at micro sizes)
        assert m["findings"] and all(v is None or isinstance(v, bool) for v in m["findings"].values()), m["findings"]
    for table, n in _expected_rows(name, m).items():
        assert len(pd.read_csv(out / name / f"{table}.csv")) == n, table


def test_manifest_lists_every_output_with_its_checksum(micro):
    out, recs = micro
    man = json.loads((out / "MANIFEST.json").read_text())
    assert set(man["notebooks"]) >= set(NOTEBOOKS)
    listed = {o["path"] for o in man["outputs"]}
    for name in NOTEBOOKS:
        if recs[name]["status"] != "ok": continue
        on_disk = {f"{name}/{p.name}" for p in (out / name).iterdir()
                   if p.suffix in {".png", ".pdf", ".csv", ".md", ".json"} and p.name != "outputs.json"}
        assert on_disk and on_disk <= listed, f"{name}: not in MANIFEST.json: {sorted(on_disk - listed)}"
        assert any(p.endswith(".png") for p in on_disk) and any(p.endswith(".csv") for p in on_disk), name
    for o in man["outputs"]:
        assert sha256_file(out / o["path"]) == o["sha256"], o["path"]
        assert o["profile"] == "micro" and o["seed"] == 0


def test_misspelled_parameter_is_refused_before_running(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) \['sed'\]"):
        run_experiment("kd_compute", "micro", tmp_path, params={"sed": 1}, notebooks=NOTEBOOK_DIR)
    assert not (tmp_path / "kd_compute" / "kd_compute.ipynb").exists()


def test_same_seed_gives_identical_tables(micro, tmp_path, monkeypatch):
    # a cold cache, so the rerun recomputes instead of reading the first run's artifacts
    monkeypatch.setenv("VFM_TRANSFER_CACHE", str(tmp_path / "cache"))
    out, recs = micro
    name = "kd_compute"
    rec = run_experiment(name, "micro", tmp_path / "again", notebooks=NOTEBOOK_DIR)
    assert rec["status"] == "ok", rec.get("error")
    first = sorted((out / name).glob("*.csv"))
    assert first
    for f in first:
        assert (tmp_path / "again" / name / f.name).read_bytes() == f.read_bytes(), f.name


def test_transfer_limits_findings_cover_the_claims_and_controls(micro):
    out, recs = micro
    assert recs["transfer_limits"]["status"] == "ok"
    m = json.loads((out / "transfer_limits" / "metrics.json").read_text())
    claims = {f["claim"] for f in m["findings"]} | {u["claim"] for u in m["undetermined"]}
    for task in m["tasks"]:  # every pretrained model against scratch on every task, paired
        assert any(c.startswith("mae beats scratch on " + task) for c in claims), task
    for task in m["restoration_tasks"]:  # the controls: the identity baseline and the zero-tokens head
        assert any("identity baseline on " + task in c for c in claims) and any("zero_tokens control" in c and task in c for c in claims)
    assert {"restoration tasks gain more from MAE than from contrastive (relative gain, %)",
            "semantic tasks gain more from contrastive than from MAE (relative gain, %)"} <= claims
    assert m["main_metric"]["segmentation"] == "dice_gland"  # lesion Dice left out of the synthetic main metric
    budget = m["auc_half_width_budget"]  # every classification model's AUC interval, read against its target
    assert set(budget) == {i for t, i in m["runs"] if t == "classification"}
    assert all(b["target"] == 0.05 and b["met"] == (b.get("half_width") is not None and b["half_width"] <= 0.05)
               for b in budget.values()), budget
    a = json.loads((out / "alignment" / "metrics.json").read_text())
    assert ("lower D2P <-> larger gain" in {f["claim"] for f in a["findings"]}
            or any(u["claim"] == "D2P vs gain_pct" for u in a["undetermined"]))


# the claims each knowledge-transfer notebook must decide (as stats.finding records), controls included
KD_CLAIMS = {
    "kd_approaches": {"task KD beats scratch", "task-oriented beats task-agnostic (feature) KD",
                      "retrieved beats generic transfer set", "in-domain beats generic transfer set",
                      "task KD beats KD from a random teacher", "task KD beats a step-matched scratch student",
                      "task KD beats the supervised (other shapes) student", "task KD beats the self-supervised (SimCLR) student",
                      "task KD beats the image-text (CLIP-style) student"},
    "kd_compute": {"the student improves with teacher pretraining compute", "task KD beats scratch",
                   "task KD beats KD from a random teacher",
                   *(f"task KD needs less pretraining compute than the {b} student"
                     for b in ("supervised (other shapes)", "self-supervised (SimCLR)", "image-text (CLIP-style)"))},
    "kd_retrieval": {"accuracy grows with the retrieved set size", "retrieved beats generic transfer set",
                     "in-domain beats generic transfer set"},
}


@pytest.mark.parametrize("name", sorted(KD_CLAIMS))
def test_kd_findings_cover_the_claims_paired_over_seeds_and_test_images(micro, name):
    from vfm_transfer.core import load_profile
    out, recs = micro
    assert recs[name]["status"] == "ok", recs[name].get("error")
    m = json.loads((out / name / "metrics.json").read_text())
    P = load_profile("micro")
    assert check_findings(m["findings"]) and m["profile"] == "micro" and m["seeds"] == list(P.get("seeds", (0,)))
    claims = {f["claim"] for f in m["findings"]}
    assert KD_CLAIMS[name] <= claims, sorted(KD_CLAIMS[name] - claims)
    for f in m["findings"]:  # every effect is paired over every seed and the whole 2-D test set of each
        assert f["n_seeds"] == len(m["seeds"]) and f["n_test"] == P.n_test_2d, f
        counted = "counted, not sampled" in f["test"]  # a FLOP ratio (kd_compute): a point, no bootstrap
        assert f["expected_sign"] == 1 and (counted and f["ci"][0] == f["ci"][1] == f["effect"]
                                             or "two-level" in f["test"] and "percentage points" in f["test"]), f
    assert 0 < m["ci_half_width"]["mean"] <= m["ci_half_width"]["max"] <= 100
