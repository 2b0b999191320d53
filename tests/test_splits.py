"""Splits are disjoint and paired as claimed: train / val / test share no case for any seed, and every arm of a seed
sees the same cases (synthetic task datasets and a manifest without a `split` column)."""
import pytest

from vfm_transfer.core import ConfigError, load_profile
from vfm_transfer.data import (SPLITS, TASKS, ProstateManifest, make_task_dataset, unlabeled_dataset,
                               write_synthetic_manifest)

P = load_profile("micro", n_train=5, n_val=3, n_test=4)


def _ids(ds):
    return [ds[i]["meta"]["case_id"] for i in range(len(ds))]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_synthetic_splits_are_disjoint_and_the_same_for_every_task(seed):
    ids = {s: _ids(make_task_dataset("classification", s, P, seed)) for s in SPLITS}
    assert [len(ids[s]) for s in SPLITS] == [5, 3, 4]
    for a in SPLITS:
        for b in SPLITS:
            if a < b: assert not set(ids[a]) & set(ids[b]), (seed, a, b)
    for task in TASKS[1:]:  # paired: every task (and so every arm) of this seed has these cases
        assert {s: _ids(make_task_dataset(task, s, P, seed)) for s in SPLITS} == ids, task
    assert _ids(make_task_dataset("segmentation", "test", P, seed)) == ids["test"]  # the same on a second call


def test_synthetic_seeds_draw_other_cases():
    a, b = (_ids(make_task_dataset("classification", "test", P, s)) for s in (0, 1))
    assert not set(a) & set(b)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_tasks_own_n_train_moves_no_other_split(seed):
    # the cpu profile's classification trains on more cases than the other tasks (finetune_overrides)
    own = P.replace(finetune_overrides={"classification": {"n_train": 9}})
    base = {s: _ids(make_task_dataset("segmentation", s, P, seed)) for s in SPLITS}
    cls = {s: _ids(make_task_dataset("classification", s, own, seed)) for s in SPLITS}
    assert len(cls["train"]) == 9 and len(set(cls["train"])) == 9
    assert cls["val"] == base["val"] and cls["test"] == base["test"]  # every arm and task still scored on these
    assert not set(cls["train"]) & (set(base["train"]) | set(base["val"]) | set(base["test"]))
    pool = {unlabeled_dataset(own, seed)[i]["case_id"] for i in range(P.n_unlabeled)}
    assert not set(cls["train"]) & pool  # nor the pretraining pool
    assert {s: _ids(make_task_dataset("segmentation", s, own, seed)) for s in SPLITS} == base  # other tasks unchanged


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return ProstateManifest(write_synthetic_manifest(tmp_path_factory.mktemp("m"), n=12, size=(8, 8, 8)),
                            profile=P.replace(vol_size=(8, 8, 8)))


@pytest.mark.parametrize("seed", [0, 1, 2, 7])
def test_manifest_without_split_column_partitions_every_case_once(manifest, seed):
    assert not manifest.has_split
    parts = {s: [manifest.case_ids[i] for i in manifest.split(s, seed=seed).indices] for s in SPLITS}
    every = parts["train"] + parts["val"] + parts["test"]
    assert sorted(every) == sorted(manifest.case_ids)  # a partition: each case in exactly one split
    assert len(set(every)) == len(every) == 12
    assert [len(parts[s]) for s in SPLITS] == [7, 3, 2]  # round(0.6 n), round(0.8 n) - round(0.6 n), the rest
    # the same seed gives the same partition (every arm of a seed is paired on it)
    assert parts == {s: [manifest.case_ids[i] for i in manifest.split(s, seed=seed).indices] for s in SPLITS}


def test_manifest_splits_through_task_datasets_are_disjoint(manifest):
    p = P.replace(vol_size=(8, 8, 8), manifest=str(manifest.path))
    for seed in (0, 1):
        ids = {s: _ids(make_task_dataset("classification", s, p, seed)) for s in SPLITS}
        assert not (set(ids["train"]) & set(ids["test"]) or set(ids["train"]) & set(ids["val"]) or set(ids["val"]) & set(ids["test"]))
        assert sum(map(len, ids.values())) == 12


def test_a_tasks_own_n_train_is_refused_for_a_manifest(manifest):
    p = P.replace(vol_size=(8, 8, 8), manifest=str(manifest.path), finetune_overrides={"classification": {"n_train": 9}})
    with pytest.raises(ConfigError, match="only synthetic data"):
        make_task_dataset("classification", "train", p)
