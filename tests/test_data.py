"""vfm_transfer.data: determinism, shapes, label balance, NIfTI round trip, every bad-input case, 2-D datasets."""
import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT  # noqa: F401  (puts the repo on the path like the other test files)

from vfm_transfer.core import DataError, ConfigError, load_profile
from vfm_transfer.data import (
    N_DOMAINS_2D, TASK_SPECS, TASKS, ImageFolderDataset, ProstateManifest, SyntheticImages2D, SyntheticProstate,
    load_volume, make_kd_datasets, make_task_dataset, save_volume, synthetic_affine, unlabeled_dataset,
    write_synthetic_manifest,
)

MICRO = load_profile("micro")


# ---------------------------------------------------------------- synthetic 3-D
def test_same_seed_same_cases_other_seed_other_cases():
    a, b, c = (SyntheticProstate(3, size=16, seed=s, cache=False) for s in (4, 4, 5))
    for i in range(3):
        for k in ("image", "gland", "lesion", "label", "affine"):
            assert torch.equal(a[i][k], b[i][k]), k
    assert not torch.equal(a[0]["image"], c[0]["image"])


def test_item_contract():
    it = SyntheticProstate(2, size=(16, 24, 20), seed=0)[1]
    assert it["image"].shape == (3, 16, 24, 20) and it["image"].dtype == torch.float32
    assert it["gland"].shape == it["lesion"].shape == (1, 16, 24, 20) and it["gland"].dtype == torch.float32
    assert set(it["gland"].unique().tolist()) <= {0.0, 1.0} and (it["lesion"] <= it["gland"]).all()
    assert it["label"].dtype == torch.int64 and it["label"].ndim == 0
    assert it["affine"].shape == (4, 4) and it["affine"].dtype == torch.float64
    assert isinstance(it["case_id"], str)
    # z-scored over the non-zero voxels of each channel
    for ch in it["image"]:
        v = ch[ch != 0]
        assert abs(float(v.mean())) < 1e-4 and abs(float(v.std(unbiased=False)) - 1) < 1e-3


def test_label_balance_and_rule():
    ds = SyntheticProstate(200, size=16, seed=3, cache=False)
    labels = np.array([int(ds[i]["label"]) for i in range(len(ds))])
    assert 0.45 <= labels.mean() <= 0.55
    for i in range(0, 200, 7):  # the label follows the size/contrast rule
        les = ds.lesions(i)
        assert int(ds[i]["label"]) == int(any(l["significant"] for l in les))
    pos = [ds[i]["lesion"].sum() for i in range(60) if labels[i] == 1]
    neg = [ds[i]["lesion"].sum() for i in range(60) if labels[i] == 0]
    assert np.mean(pos) > np.mean(neg)  # learnable: positives carry bigger lesions on average


def test_task_datasets_shapes_and_splits():
    ids = {}
    for split in ("train", "val", "test"):
        ds = make_task_dataset("classification", split, MICRO)
        assert len(ds) == getattr(MICRO, f"n_{split}")
        ids[split] = {ds[i]["meta"]["case_id"] for i in range(len(ds))}
        labels = [int(ds[i]["target"]) for i in range(len(ds))]
        assert abs(np.mean(labels) - 0.5) <= 0.5 / len(ds) + 1e-9  # balanced in every split
    un = unlabeled_dataset(MICRO)
    ids["unlabeled"] = {un[i]["case_id"] for i in range(len(un))}
    assert len(un) == MICRO.n_unlabeled
    all_ids = [x for v in ids.values() for x in v]
    assert len(all_ids) == len(set(all_ids))
    for task in TASKS:
        spec = TASK_SPECS[task]
        it = make_task_dataset(task, "test", MICRO, seed=1)[0]
        assert it["input"].shape == (3, *MICRO.vol_size) and it["input"].dtype == torch.float32
        if spec["kind"] == "restoration":
            assert it["target"].shape == (spec["out_channels"], *MICRO.vol_size) and it["target"].dtype == torch.float32
        elif spec["kind"] == "segmentation":
            assert it["target"].shape == tuple(MICRO.vol_size) and it["target"].dtype == torch.int64
        else:
            assert it["target"].dtype == torch.int64 and it["target"].ndim == 0


def test_task_semantics():
    p = MICRO.replace(sr_factor=4)
    sr = make_task_dataset("super_resolution", "train", p)[0]
    assert not torch.allclose(sr["input"], sr["target"])
    # the degradation is through-plane: in-plane detail of a slice is smoother than the target's along D
    d_in = (sr["input"][:, 1:] - sr["input"][:, :-1]).abs().mean()
    d_tg = (sr["target"][:, 1:] - sr["target"][:, :-1]).abs().mean()
    assert d_in < d_tg
    dc = make_task_dataset("distortion_correction", "train", MICRO)[0]
    assert torch.equal(dc["input"][0], make_task_dataset("classification", "train", MICRO)[0]["input"][0])  # T2W untouched
    assert not torch.allclose(dc["input"][1:], dc["target"]) and dc["meta"]["max_shift_voxels"] > 0
    sy = make_task_dataset("synthesis", "train", MICRO)[0]
    assert sy["input"][1].abs().sum() == 0 and torch.equal(sy["target"][0], make_task_dataset("classification", "train", MICRO)[0]["input"][1])
    seg = make_task_dataset("segmentation", "train", MICRO)
    assert any((seg[i]["target"] == 2).any() for i in range(len(seg)))


def test_task_dataset_deterministic_across_calls():
    a = make_task_dataset("distortion_correction", "val", MICRO, seed=2)[1]
    b = make_task_dataset("distortion_correction", "val", MICRO.replace(), seed=2)[1]
    assert torch.equal(a["input"], b["input"]) and torch.equal(a["target"], b["target"])


# ---------------------------------------------------------------- NIfTI
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_round_trip(tmp_path, suffix):
    a = np.random.default_rng(0).normal(size=(6, 7, 8)).astype(np.float32)
    aff = synthetic_affine((6, 7, 8)); aff[:3, 3] += [1.5, -2.0, 3.25]
    save_volume(tmp_path / f"v{suffix}", a, aff)
    b, aff2 = load_volume(tmp_path / f"v{suffix}")
    assert b.dtype == np.float32 and np.array_equal(a, b)
    assert np.allclose(aff, aff2, atol=1e-5)
    m = np.zeros((6, 7, 8), bool); m[2:4] = True
    save_volume(tmp_path / f"m{suffix}", torch.from_numpy(m), torch.from_numpy(aff))
    assert np.array_equal(load_volume(tmp_path / f"m{suffix}")[0], m.astype(np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"v{suffix}", f"m{suffix}"])  # no temporaries


def test_load_volume_errors(tmp_path):
    a = np.ones((4, 4, 4), np.float32)
    save_volume(tmp_path / "ok.nii.gz", a)
    raw = (tmp_path / "ok.nii.gz").read_bytes()
    (tmp_path / "trunc.nii.gz").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "junk.nii.gz").write_bytes(b"this is not gzip" * 4)
    (tmp_path / "junk.nii").write_bytes(b"\0" * 10)
    for name in ("trunc.nii.gz", "junk.nii.gz", "junk.nii", "absent.nii"):
        with pytest.raises(DataError, match=name.replace(".", r"\.")):
            load_volume(tmp_path / name)
    with pytest.raises(DataError, match="not a NIfTI file name"):
        load_volume(tmp_path / "x.txt")
    with pytest.raises(DataError, match="affine"):
        save_volume(tmp_path / "bad.nii", a, np.eye(3))
    assert not (tmp_path / "bad.nii").exists()


# ---------------------------------------------------------------- manifest
@pytest.fixture
def manifest(tmp_path):
    csv = write_synthetic_manifest(tmp_path / "data", n=3, size=16, seed=0)
    return csv


def _man(csv):
    return ProstateManifest(csv, profile=MICRO, spacing=(100 / 16,) * 3)


def test_manifest_round_trip(manifest):
    man = _man(manifest)
    ref = SyntheticProstate(3, size=16, seed=0)
    for i in range(3):
        got, want = man[i], ref[i]
        assert torch.allclose(got["image"], want["image"], atol=1e-4)
        assert torch.equal(got["gland"], want["gland"]) and torch.equal(got["lesion"], want["lesion"])
        assert torch.allclose(got["affine"], want["affine"], atol=1e-4) and int(got["label"]) == int(want["label"])


def test_manifest_resamples_to_profile_grid(manifest):
    man = ProstateManifest(manifest, profile=MICRO.replace(vol_size=(8, 12, 10)), spacing=(5.0, 5.0, 10.0))
    it = man[0]
    assert it["image"].shape == (3, 8, 12, 10) and it["gland"].shape == (1, 8, 12, 10)
    # axis 0 is the through-plane (z) axis at 10 mm, axes 1, 2 at 5 mm
    assert np.allclose(np.abs(it["affine"].numpy()[:3, :3]).max(0), [10.0, 5.0, 5.0], atol=1e-4)


def _rewrite(csv, old, new):
    p = Path(csv); p.write_text(p.read_text().replace(old, new))


def _replace_volume(csv, case, col, array, affine=None):
    f = Path(csv).parent / f"{case}_{col}.nii.gz"
    _, aff = load_volume(f)
    f.unlink()
    save_volume(f, array, aff if affine is None else affine)
    return f


def _check_error(csv, *needles):
    listing = sorted(p.name for p in Path(csv).parent.iterdir())
    with pytest.raises(DataError) as e:
        man = _man(csv)
        for i in range(len(man)): man[i]
    for n in needles:
        assert n in str(e.value), (n, str(e.value))
    assert sorted(p.name for p in Path(csv).parent.iterdir()) == listing  # nothing written


def test_manifest_missing_file(manifest):
    (Path(manifest).parent / "syn0-00001_adc.nii.gz").unlink()
    _check_error(manifest, "case 'syn0-00001'", "column 'adc'", "syn0-00001_adc.nii.gz", "not found")


def test_manifest_truncated_gzip(manifest):
    f = Path(manifest).parent / "syn0-00002_dwi.nii.gz"
    raw = f.read_bytes(); f.write_bytes(raw[: len(raw) * 2 // 3])
    _check_error(manifest, "case 'syn0-00002'", "column 'dwi'", "syn0-00002_dwi.nii.gz")


def test_manifest_corrupt_gzip(manifest):
    f = Path(manifest).parent / "syn0-00000_t2w.nii.gz"
    raw = bytearray(f.read_bytes()); raw[40:60] = b"\xff" * 20; f.write_bytes(bytes(raw))
    _check_error(manifest, "case 'syn0-00000'", "column 't2w'", "syn0-00000_t2w.nii.gz")


@pytest.mark.parametrize("shape, what", [((16, 16), "2-D"), ((16, 16, 16, 2), "4-D")])
def test_manifest_wrong_ndim(manifest, shape, what):
    _replace_volume(manifest, "syn0-00001", "t2w", np.ones(shape, np.float32))
    _check_error(manifest, "case 'syn0-00001'", "column 't2w'", "syn0-00001_t2w.nii.gz", f"got {what}")


def test_manifest_trailing_singleton_axis_is_fine(manifest):
    f = Path(manifest).parent / "syn0-00001_t2w.nii.gz"
    a, aff = load_volume(f)
    _replace_volume(manifest, "syn0-00001", "t2w", a[..., None])
    assert _man(manifest)[1]["image"].shape == (3, 16, 16, 16)


def test_manifest_shape_mismatch(manifest):
    _replace_volume(manifest, "syn0-00000", "adc", np.ones((16, 16, 12), np.float32))
    _check_error(manifest, "case 'syn0-00000'", "column 'adc'", "shape (16, 16, 12)", "column 't2w'")


def test_manifest_affine_mismatch(manifest):
    f = Path(manifest).parent / "syn0-00000_dwi.nii.gz"
    a, aff = load_volume(f)
    aff2 = aff.copy(); aff2[0, 3] += 7.0
    _replace_volume(manifest, "syn0-00000", "dwi", a, aff2)
    _check_error(manifest, "case 'syn0-00000'", "column 'dwi'", "different affine", "syn0-00000_dwi.nii.gz")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_manifest_non_finite(manifest, bad):
    f = Path(manifest).parent / "syn0-00002_adc.nii.gz"
    a, _ = load_volume(f); a[3, 4, 5] = bad
    _replace_volume(manifest, "syn0-00002", "adc", a)
    _check_error(manifest, "case 'syn0-00002'", "column 'adc'", "1 NaN/inf voxel", "syn0-00002_adc.nii.gz")


def test_manifest_empty_mask_cell(manifest):
    _rewrite(manifest, "syn0-00001_lesion.nii.gz", "")
    _check_error(manifest, "case 'syn0-00001'", "column 'lesion' is empty")


def test_manifest_empty_gland_mask(manifest):
    f = Path(manifest).parent / "syn0-00000_gland.nii.gz"
    a, _ = load_volume(f)
    _replace_volume(manifest, "syn0-00000", "gland", np.zeros_like(a, dtype=np.uint8))
    _check_error(manifest, "case 'syn0-00000'", "column 'gland'", "is empty", "syn0-00000_gland.nii.gz")


def test_manifest_bad_columns_and_labels(manifest):
    _rewrite(manifest, "case_id,t2w,dwi,adc", "case,t2w,dwi,adc")
    _check_error(manifest, "missing column(s) ['case_id']", "manifest.csv")
    _rewrite(manifest, "case,t2w,dwi,adc", "case_id,t2w,dwi,adc")
    lines = Path(manifest).read_text().splitlines()
    Path(manifest).write_text("\n".join(lines[:-1] + [lines[-1][:-1] + "2"]) + "\n")
    _check_error(manifest, "case 'syn0-00002'", "column 'label'", "expected 0 or 1")


def test_manifest_task_dataset_via_profile(manifest):
    p = MICRO.replace(manifest=str(manifest))
    ds = make_task_dataset("segmentation", "train", p)
    assert len(ds) >= 1 and ds[0]["target"].shape == tuple(MICRO.vol_size)
    with pytest.raises(DataError, match="split"):
        unlabeled_dataset(p)


# ---------------------------------------------------------------- 2-D
def test_synthetic_2d():
    ds = SyntheticImages2D(12, size=16, n_classes=4, domain=2, seed=1, segmentation=True)
    it = ds[6]
    assert it["image"].shape == (3, 16, 16) and it["image"].dtype == torch.float32
    assert 0 <= float(it["image"].min()) and float(it["image"].max()) <= 1
    assert it["label"].dtype == torch.int64 and int(it["label"]) == 2
    assert it["mask"].shape == (16, 16) and set(it["mask"].unique().tolist()) == {0, 3}
    assert torch.equal(SyntheticImages2D(12, size=16, n_classes=4, domain=2, seed=1)[6]["image"], it["image"])
    assert not torch.equal(SyntheticImages2D(12, size=16, n_classes=4, domain=3, seed=1)[6]["image"], it["image"])
    with pytest.raises(ConfigError, match="domain"):
        SyntheticImages2D(3, domain=N_DOMAINS_2D)


def test_kd_datasets():
    kd = make_kd_datasets(MICRO, seed=0, segmentation=True)
    C = kd["n_classes"]
    assert C == MICRO.n_classes_2d and N_DOMAINS_2D >= 4
    for k in MICRO.labels_per_class:
        labels = [int(kd["labeled"][k][i]["label"]) for i in range(len(kd["labeled"][k]))]
        assert np.bincount(labels, minlength=C).tolist() == [k] * C
    small, large = sorted(MICRO.labels_per_class)[:2]
    for i in range(len(kd["labeled"][small])):  # nested
        assert torch.equal(kd["labeled"][small][i]["image"], kd["labeled"][large][i]["image"])
    assert len(kd["test"]) == MICRO.n_test_2d and len(kd["in_domain"]) == len(kd["generic"]) == MICRO.transfer_size
    assert len(kd["gallery"]) == MICRO.gallery_size
    assert (kd["test"].domains == 0).all() and (kd["in_domain"].domains == 0).all() and (kd["generic"].domains > 0).all()
    assert (kd["pretrain"].domains > 0).all()  # the teacher's pool holds no target-domain image
    frac = float((kd["gallery"].domains == 0).float().mean())
    assert 0 < frac < 0.5
    # no image shared between pools (pools are drawn from disjoint index ranges)
    seen = {}
    for name in ("val", "test", "in_domain", "generic", "gallery", "pretrain"):
        for i in range(0, len(kd[name]), 5):
            key = kd[name][i]["image"].numpy().tobytes()
            assert key not in seen, (name, seen.get(key))
            seen[key] = name
    assert "mask" in kd["test"][0]
    kd2 = make_kd_datasets(MICRO, seed=0)
    assert torch.equal(kd2["gallery"][7]["image"], kd["gallery"][7]["image"])


def test_image_folder(tmp_path):
    from PIL import Image
    for c, val in (("b_class", 200), ("a_class", 10)):
        (tmp_path / c).mkdir()
        for j in range(3):
            Image.fromarray(np.full((9 + j, 11, 3), val, np.uint8)).save(tmp_path / c / f"{j}.png")
    ds = ImageFolderDataset(tmp_path, size=12)
    assert ds.classes == ["a_class", "b_class"] and len(ds) == 6 and ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    it = ds[4]
    assert it["image"].shape == (3, 12, 12) and int(it["label"]) == 1 and abs(float(it["image"].mean()) - 200 / 255) < 1e-6
    assert it["path"].endswith("1.png")
    batch = torch.utils.data.default_collate([ds[i] for i in range(6)])
    assert batch["image"].shape == (6, 3, 12, 12)
    (tmp_path / "a_class" / "broken.jpg").write_bytes(b"\x89PNG garbage")
    ds = ImageFolderDataset(tmp_path)
    bad = [i for i, (p, _) in enumerate(ds.samples) if p.name == "broken.jpg"][0]
    with pytest.raises(DataError, match="broken.jpg"):
        ds[bad]
    with pytest.raises(DataError, match="no class sub-folders"):
        (tmp_path / "empty").mkdir(); ImageFolderDataset(tmp_path / "empty")


def test_manifest_without_masks_or_labels(manifest):
    lines = Path(manifest).read_text().splitlines()
    rows = [l.split(",") for l in lines]
    # keep case_id, t2w, dwi, adc; drop gland, lesion, label; put every case in the train split
    Path(manifest).write_text("\n".join([",".join(rows[0][:4]) + ",split"] + [",".join(r[:4]) + ",train" for r in rows[1:]]) + "\n")
    p = MICRO.replace(manifest=str(manifest))
    man = ProstateManifest(manifest, profile=MICRO)
    assert man.labels.tolist() == [-1, -1, -1] and man[0]["has_masks"] is False
    with pytest.raises(DataError, match="no gland/lesion masks"):
        make_task_dataset("segmentation", "train", p)[0]
    with pytest.raises(DataError, match="has no label"):
        make_task_dataset("classification", "train", p)[0]
    assert make_task_dataset("synthesis", "train", p)[0]["target"].shape == (1, *MICRO.vol_size)
    with pytest.raises(DataError, match="no cases in split 'val'"):
        make_task_dataset("synthesis", "val", p)


def test_manifest_reorients_to_ras(manifest):
    # store every volume of one case flipped along x and y (LPS-like storage) with the matching affine:
    # after Orientation("RAS") the case must come back exactly as the unflipped one
    ref = _man(manifest)[1]
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    for col in ("t2w", "dwi", "adc", "gland", "lesion"):
        f = Path(manifest).parent / f"syn0-00001_{col}.nii.gz"
        a, aff = load_volume(f)
        n = a.shape
        flip[:2, 3] = [n[0] - 1, n[1] - 1]  # index i' = n - 1 - i
        _replace_volume(manifest, "syn0-00001", col, a[::-1, ::-1].copy(), aff @ flip)
    got = _man(manifest)[1]
    assert torch.allclose(got["image"], ref["image"], atol=1e-4)
    assert torch.equal(got["gland"], ref["gland"]) and torch.equal(got["lesion"], ref["lesion"])
    assert torch.allclose(got["affine"], ref["affine"], atol=1e-4)
