"""Reliability tests of vfm_transfer.distill: KD loss, teacher cache (exactness, crash safety, mismatches),
distillation lowering the KD loss, bad inputs, and a micro run_kd end to end."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from conftest import ROOT  # noqa: F401  (the session fixture points the cache at a temp dir)
from vfm_transfer.core import CheckpointError, ConfigError, DataError, load_profile, set_seed
from vfm_transfer.distill import (TeacherCache, build_student, build_teacher, count_flops, distill_features,
                                  distill_task, evaluate_2d, kd_loss, make_view, run_kd, stage_flops)


class Images(Dataset):
    "Random images with a class-dependent colour (a minimal stand-in for data.SyntheticImages2D)."
    def __init__(self, n=24, size=16, n_classes=3, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, n_classes, (n,), generator=g)
        self.images = torch.randn(n, 3, size, size, generator=g) * 0.5
        for i, c in enumerate(self.labels.tolist()): self.images[i, c % 3] += 1
        self.masks = (self.images.mean(1) > 0.3).long() * (self.labels[:, None, None] + 1)

    def __len__(self): return len(self.labels)
    def __getitem__(self, i): return {"image": self.images[i], "label": self.labels[i], "mask": self.masks[i]}


@pytest.fixture(scope="module")
def teacher():
    set_seed(0)
    return build_teacher("vit_tiny", num_classes=3, img_size=16).eval()


# --- KD loss -----------------------------------------------------------------------------------------------------

def test_kd_loss_hand_computation():
    s = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]])
    t = torch.tensor([[0.0, 2.0, 0.0], [3.0, -1.0, 0.0]])
    tau = 2.0
    total = 0.0
    for si, ti in zip(s.tolist(), t.tolist()):
        ps = [math.exp(v / tau) for v in si]; ps = [v / sum(ps) for v in ps]
        pt = [math.exp(v / tau) for v in ti]; pt = [v / sum(pt) for v in pt]
        total += sum(b * (math.log(b) - math.log(a)) for a, b in zip(ps, pt))
    assert kd_loss(s, t, tau).item() == pytest.approx(tau ** 2 * total / 2, rel=1e-6)


def test_kd_loss_per_pixel_is_mean_over_pixels():
    s, t = torch.randn(2, 4, 3, 5), torch.randn(2, 4, 3, 5)
    per_pixel = [kd_loss(s[b:b + 1, :, i, j], t[b:b + 1, :, i, j], 1.5) for b in range(2) for i in range(3) for j in range(5)]
    assert kd_loss(s, t, 1.5).item() == pytest.approx(torch.stack(per_pixel).mean().item(), rel=1e-5)


def test_kd_loss_is_zero_iff_equal_and_positive_otherwise():
    z = torch.randn(4, 5)
    assert kd_loss(z, z).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(z, z + torch.randn(4, 5)).item() > 0


# --- teacher cache -----------------------------------------------------------------------------------------------

def test_cache_returns_what_the_teacher_computes(teacher, tmp_path):
    ds = Images(10)
    c = TeacherCache(teacher, ds, n_views=3, aug_seed=7, root=tmp_path, batch_size=4, device="cpu")
    for v in range(3):
        x = torch.stack([make_view(ds[i]["image"], i, v, 7) for i in range(10)])
        with torch.no_grad():
            ref = teacher(x)
        got = c.get(range(10), v)
        assert got.dtype == torch.float32
        # stored as float16: equal to the teacher's output rounded to float16
        assert torch.equal(got, ref.half().float())
        assert torch.equal(c.views(range(10), v), x)


def test_cache_is_reused_not_rebuilt(teacher, tmp_path):
    ds = Images(6)
    c1 = TeacherCache(teacher, ds, n_views=2, root=tmp_path, device="cpu")
    mtime = (c1.path / "outputs.npy").stat().st_mtime_ns
    c2 = TeacherCache(teacher, ds, n_views=2, root=tmp_path, device="cpu")
    assert c2.path == c1.path and c2.build_seconds == 0.0
    assert (c2.path / "outputs.npy").stat().st_mtime_ns == mtime


def test_cache_crash_mid_build_is_never_read_as_complete(teacher, tmp_path):
    ds = Images(11)
    with pytest.raises(RuntimeError, match="injected failure after 2 batches"):
        TeacherCache(teacher, ds, n_views=2, aug_seed=1, root=tmp_path / "a", batch_size=3, device="cpu", _fail_after=2)
    assert not list((tmp_path / "a").rglob("meta.json")), "a crashed build must not be marked complete"
    assert not list((tmp_path / "a").rglob("outputs.npy"))
    resumed = TeacherCache(teacher, ds, n_views=2, aug_seed=1, root=tmp_path / "a", batch_size=3, device="cpu")
    fresh = TeacherCache(teacher, ds, n_views=2, aug_seed=1, root=tmp_path / "b", batch_size=3, device="cpu")
    for v in range(2):
        assert torch.equal(resumed.get(range(11), v), fresh.get(range(11), v))
        assert torch.equal(resumed.views(range(11), v), fresh.views(range(11), v))
    assert not list((tmp_path / "a").rglob("*.partial"))


def test_cache_for_another_teacher_or_transfer_set_is_refused(teacher, tmp_path):
    ds = Images(6)
    c = TeacherCache(teacher, ds, n_views=1, root=tmp_path, device="cpu")
    other = build_teacher("vit_tiny", num_classes=3, img_size=16)
    with pytest.raises(CheckpointError, match="was built for teacher"):
        c.check(other)
    with pytest.raises(CheckpointError, match="was built for teacher"):
        distill_task(other, build_student(num_classes=3, img_size=16), ds, cache=c, epochs=1, device="cpu")
    with pytest.raises(DataError, match="was built for transfer set"):
        c.check(teacher, Images(6, seed=5))
    # a cache of another configuration lives in another folder
    assert TeacherCache(teacher, ds, n_views=1, aug_seed=3, root=tmp_path, device="cpu").path != c.path


# --- distillation ------------------------------------------------------------------------------------------------

def test_distillation_lowers_kd_loss(teacher):
    set_seed(0)
    student = build_student("student_tiny", num_classes=3, img_size=16)
    ds = Images(48, seed=2)
    h = distill_task(teacher, student, ds, epochs=5, lr=3e-3, batch_size=16, n_views=2, device="cpu")
    assert h["loss"][-1] < 0.7 * h["loss"][0], h["loss"]


def test_cached_and_uncached_distillation_agree(teacher, tmp_path):
    ds = Images(32, seed=3)
    kw = dict(epochs=2, lr=1e-3, batch_size=16, n_views=2, seed=4, device="cpu")
    set_seed(1); s1 = build_student(num_classes=3, img_size=16)
    set_seed(1); s2 = build_student(num_classes=3, img_size=16)
    h1 = distill_task(teacher, s1, ds, aug_seed=4, **kw)
    c = TeacherCache(teacher, ds, n_views=2, aug_seed=4, root=tmp_path, device="cpu")
    h2 = distill_task(teacher, s2, ds, cache=c, **kw)
    assert np.allclose(h1["loss"], h2["loss"], rtol=1e-2), (h1["loss"], h2["loss"])


def test_same_seed_same_numbers(teacher):
    ds = Images(16, seed=3)
    out = []
    for _ in range(2):
        set_seed(0); s = build_student(num_classes=3, img_size=16)
        out.append(distill_task(teacher, s, ds, epochs=2, batch_size=8, seed=2, device="cpu")["loss"])
    assert out[0] == out[1]


def test_segmentation_distillation_runs_and_lowers_loss(tmp_path):
    set_seed(0)
    t = build_teacher("vit_tiny", num_classes=4, img_size=16, segmentation=True).eval()
    s = build_student(num_classes=4, img_size=16, segmentation=True)
    ds = Images(24, seed=1)
    c = TeacherCache(t, ds, n_views=2, root=tmp_path, device="cpu")
    assert c.get([0, 1], 0).shape == (2, 4, 16, 16)
    h = distill_task(t, s, ds, task="segmentation", epochs=4, lr=3e-3, batch_size=8, cache=c, device="cpu")
    assert h["loss"][-1] < h["loss"][0], h["loss"]
    assert set(evaluate_2d(s, ds, device="cpu")) == {"miou", "pixel_accuracy", "per_image_iou"}


@pytest.mark.parametrize("loss", ["cosine", "contrastive"])
def test_feature_distillation_lowers_its_loss(teacher, loss):
    set_seed(0)
    h = distill_features(teacher, build_student(num_classes=3, img_size=16), Images(32, seed=2), loss=loss,
                         epochs=4, lr=3e-3, batch_size=16, device="cpu")
    assert h["loss"][-1] < h["loss"][0], h["loss"]


# --- bad inputs --------------------------------------------------------------------------------------------------

def test_bad_inputs(teacher, tmp_path):
    s4 = build_student(num_classes=4, img_size=16)
    with pytest.raises(ConfigError, match="teacher has 3 classes but student has 4"):
        distill_task(teacher, s4, Images(4), device="cpu")
    with pytest.raises(DataError, match="transfer_ds is empty"):
        distill_task(teacher, build_student(num_classes=3, img_size=16), Images(0), device="cpu")
    with pytest.raises(DataError, match="transfer_ds is empty"):
        TeacherCache(teacher, Images(0), root=tmp_path)
    with pytest.raises(ConfigError, match="unknown task"):
        distill_task(teacher, build_student(num_classes=3, img_size=16), Images(4), task="depth")
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        kd_loss(torch.zeros(1, 2), torch.zeros(1, 2), temperature=-1)
    with pytest.raises(ConfigError, match="unknown student"):
        build_student("resnet50")
    with pytest.raises(ConfigError, match="unknown approach"):
        run_kd("magic", profile="micro")


# --- compute accounting ------------------------------------------------------------------------------------------

def test_count_flops_linear_and_gradients_untouched():
    lin = torch.nn.Linear(8, 4)
    lin.weight.grad = torch.ones_like(lin.weight)
    f = count_flops(lin, (5, 8))
    assert f["forward"] == 2 * 5 * 8 * 4 and f["backward"] == f["forward"] and f["total"] == 2 * f["forward"]
    assert torch.equal(lin.weight.grad, torch.ones_like(lin.weight)) and lin.bias.grad is None


def test_stage_flops_cache_saves_teacher_compute():
    tf, sf = {"forward": 100, "total": 300}, {"forward": 10, "total": 30}
    cached = stage_flops(tf, sf, n_transfer=50, n_views=2, kd_epochs=10, cached=True)
    online = stage_flops(tf, sf, n_transfer=50, n_views=2, kd_epochs=10, cached=False)
    assert cached["teacher_outputs"] == 50 * 2 * 100 and online["teacher_outputs"] == 50 * 10 * 100
    assert cached["student_distill"] == online["student_distill"] == 50 * 10 * 30


# --- end to end --------------------------------------------------------------------------------------------------

def test_run_kd_micro_end_to_end():
    r = run_kd("task", "in_domain", labels_per_class=2, profile="micro", device="cpu")
    assert 0.0 <= r["metric"] <= 1.0 and r["n_transfer"] == 48
    assert r["flops"]["teacher_outputs"] > 0 and r["flops"]["student_distill"] > 0
    assert len(r["kd_loss"]) == load_profile("micro").kd_epochs
    again = run_kd("task", "in_domain", labels_per_class=2, profile="micro", device="cpu")
    assert again["metric"] == r["metric"] and again["kd_loss"] == r["kd_loss"]
    s = run_kd("scratch", labels_per_class=2, profile="micro", device="cpu")
    assert s["flops"]["student_pretraining"] == 0 and s["kd_loss"] == []


# --- the in-run teacher: input normalisation stored with the weights ------------------------------------------

def test_pretrained_teacher_caches_weights_and_input_statistics(tmp_path):
    from vfm_transfer.distill import InputNorm, kd_datasets, pool_stats, pretrained_teacher
    from vfm_transfer.core import load_profile
    p = load_profile("micro")
    enc, info = pretrained_teacher(p, device="cpu", root=tmp_path)
    assert isinstance(enc, InputNorm) and info["n_pretrain"] == p.transfer_size + p.gallery_size
    from vfm_transfer.data import make_pretrain_pool
    pool = make_pretrain_pool(p) if info["source"] == "supervised on the disjoint pool" else \
        torch.utils.data.ConcatDataset([kd_datasets(p, 0)["generic"], kd_datasets(p, 0)["gallery"]])
    mean, std = pool_stats(pool)
    assert torch.allclose(enc.mean.flatten(), mean) and torch.allclose(enc.std.flatten(), std)
    assert 0.0 <= info["target_val_accuracy"] <= 1.0 and len(info["pretrain_loss"]) == p.teacher_pretrain_epochs
    assert 0.0 <= info["target_probe_accuracy"] <= 1.0 and 0.0 <= info["random_init_probe_accuracy"] <= 1.0
    assert info["chance"] == 1 / p.n_classes_2d and info["probe_n_test"] == p.n_test_2d
    again, info2 = pretrained_teacher(p, device="cpu", root=tmp_path)  # read from the cache, statistics included
    sd1, sd2 = enc.state_dict(), again.state_dict()
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    assert info2["pretrain_loss"] == info["pretrain_loss"]
    x = torch.rand(2, 3, p.img2d_size, p.img2d_size)
    assert torch.equal(enc.forward_features(x)[0], enc.encoder.forward_features((x - enc.mean) / enc.std)[0])
    with pytest.raises(ConfigError, match="unknown pool 'web'"):
        pretrained_teacher(p, pool="web", root=tmp_path)


def test_teacher_checkpoints_are_epochs_of_one_run(tmp_path):
    from vfm_transfer.core import load_profile
    from vfm_transfer.distill import pretrained_teacher, teacher_checkpoints
    p = load_profile("micro", teacher_pretrain_epochs=4)
    assert teacher_checkpoints(4) == [1, 2, 4] and teacher_checkpoints(1) == [1]
    # asking for an intermediate checkpoint first trains the whole run once and keeps its checkpoints
    e1, i1 = pretrained_teacher(p, device="cpu", root=tmp_path, at_epoch=1)
    files = sorted(f.name for f in next((tmp_path / "teacher").iterdir()).iterdir() if f.suffix == ".pt")
    assert files == ["backbone.pt", "backbone_epoch1.pt", "backbone_epoch2.pt"]
    final, info = pretrained_teacher(p, device="cpu", root=tmp_path)
    e2, i2 = pretrained_teacher(p, device="cpu", root=tmp_path, at_epoch=2)
    assert (i1["epochs"], i2["epochs"], info["epochs"]) == (1, 2, 4)
    w = lambda m: m.state_dict()["encoder.vit.blocks.0.attn.qkv.weight"]
    assert not torch.equal(w(e1), w(final)) and not torch.equal(w(e2), w(final)) and not torch.equal(w(e1), w(e2))
    # the epoch-1 weights are those of the 4-epoch run (same schedule), not of a separate 1-epoch run
    short, _ = pretrained_teacher(p.replace(teacher_pretrain_epochs=1), device="cpu", root=tmp_path)
    assert not torch.equal(w(short), w(e1))
    with pytest.raises(ConfigError, match=r"keeps checkpoints at epochs \[1, 2, 4\]"):
        pretrained_teacher(p, device="cpu", root=tmp_path, at_epoch=3)


# --- evaluation against a hand count; the teacher's pool; the controls; findings ----------------------------------

class _Const(torch.nn.Module):
    "Predicts class 1 for every image (classification) or pixel (segmentation)."
    def __init__(self, task, C):
        super().__init__()
        self.task, self.num_classes = task, C
    def forward(self, x):
        shape = (x.shape[0], self.num_classes) + (tuple(x.shape[-2:]) if self.task == "segmentation" else ())
        return torch.zeros(shape).index_fill_(1, torch.tensor([1]), 1.0)


class _Items(Dataset):
    def __init__(self, items): self.items = items
    def __len__(self): return len(self.items)
    def __getitem__(self, i): return self.items[i]


def test_evaluate_2d_equals_a_hand_count():
    img = torch.zeros(3, 4, 4)
    labels = [0, 1, 1, 2, 1]
    m = evaluate_2d(_Const("classification", 3), _Items([{"image": img, "label": torch.tensor(c)} for c in labels]),
                    batch_size=2, device="cpu")
    assert m["correct"] == [0, 1, 1, 0, 1] and m["accuracy"] == 3 / 5
    # two 4x4 masks, prediction 1 everywhere; counts by hand per class over both images:
    # mask A: 6 pixels of 0, 10 of 1; mask B: 8 of 0, 4 of 1, 4 of 2
    a = torch.tensor([0] * 6 + [1] * 10).reshape(4, 4)
    b = torch.tensor([0] * 8 + [1] * 4 + [2] * 4).reshape(4, 4)
    ms = evaluate_2d(_Const("segmentation", 3), _Items([{"image": img, "mask": a}, {"image": img, "mask": b}]), device="cpu")
    # class 0: TP 0, union 14 -> 0; class 1: TP 14, union 32 -> 14/32; class 2: TP 0, union 4 -> 0
    assert math.isclose(ms["miou"], (14 / 32) / 3) and math.isclose(ms["pixel_accuracy"], 14 / 32)
    # per image: A has {0, 1}: 0 and 10/16 -> 5/16; B has {0, 1, 2}: 0, 4/16, 0 -> 1/12
    assert np.allclose(ms["per_image_iou"], [5 / 16, 1 / 12])


def test_pretraining_pool_is_disjoint_from_every_target_and_transfer_image():
    from vfm_transfer.data import make_kd_datasets, make_pretrain_pool
    p = load_profile("micro")
    pool = make_pretrain_pool(p)
    assert len(pool) == p.transfer_size + p.gallery_size and bool((pool.domains > 0).all())  # never the target domain
    pooled = {pool[i]["image"].numpy().tobytes() for i in range(len(pool))}
    for seed in (0, 1):
        kd = make_kd_datasets(p, seed)
        assert torch.equal(kd["pretrain"][0]["image"], pool[0]["image"])  # one pool for every seed
        for name in ("val", "test", "in_domain", "generic", "gallery"):
            for i in range(len(kd[name])):
                assert kd[name][i]["image"].numpy().tobytes() not in pooled, (seed, name, i)
        lab = kd["labeled"][max(p.labels_per_class)]
        assert not any(lab[i]["image"].numpy().tobytes() in pooled for i in range(len(lab)))


def test_disjoint_pool_is_what_the_teacher_trains_on(tmp_path):
    from vfm_transfer.distill import pretrained_teacher
    p = load_profile("micro")
    enc, info = pretrained_teacher(p, device="cpu", root=tmp_path, pool="disjoint")
    assert info["source"] == "supervised on the disjoint pool" and info["n_pretrain"] == p.transfer_size + p.gallery_size
    with pytest.raises(ConfigError, match="unknown pool"):
        pretrained_teacher(p, device="cpu", root=tmp_path, pool="target")


def test_controls_random_teacher_and_step_matched_scratch(tmp_path):
    kw = dict(labels_per_class=2, profile="micro", device="cpu", root=tmp_path)
    task = run_kd("task", "in_domain", **kw)
    rnd = run_kd("task_random_teacher", "in_domain", **kw)
    matched = run_kd("scratch_matched", "in_domain", **kw)
    scratch = run_kd("scratch", **kw)
    assert rnd["flops"]["teacher_pretrain"] == 0 < task["flops"]["teacher_pretrain"]
    assert rnd["teacher_source"].startswith("random init") and rnd["kd_loss"]
    assert task["test_key"] == rnd["test_key"] == matched["test_key"] == scratch["test_key"]
    # step-matched: distillation + fine-tuning steps of task KD, rounded up to whole epochs over the labels
    per_epoch = math.ceil(task["n_labeled"] / 32)
    assert task["student_steps"] <= matched["student_steps"] < task["student_steps"] + per_epoch
    assert matched["matched_steps"] == task["student_steps"] and scratch["student_steps"] < task["student_steps"]
    assert matched["flops"]["student_pretraining"] == 0 and matched["kd_loss"] == []
    assert matched["flops"]["student_finetune"] > scratch["flops"]["student_finetune"]


def test_stage_a_steps_grow_with_the_budget_and_the_best_val_epoch_is_kept(tmp_path):
    kw = dict(profile="micro", device="cpu", root=tmp_path)
    small, large = (run_kd("task", "in_domain", labels_per_class=k, **kw) for k in load_profile("micro").labels_per_class)
    assert len(small["finetune_loss"]) == len(large["finetune_loss"])  # the same epochs, so more steps for more labels
    assert large["flops"]["teacher_finetune"] > small["flops"]["teacher_finetune"]
    for r in (small, large):
        sel = r["teacher_selection"]
        assert sel["best_val"] == max(v for _, v in sel["val_curve"]) and sel["n_val"] > 0


def test_findings_from_runs_follow_the_schema(tmp_path):
    from vfm_transfer.distill import metric_estimate, paired_runs
    from vfm_transfer.stats import check_findings, ci_summary, estimate, finding
    kw = dict(labels_per_class=2, profile="micro", device="cpu", root=tmp_path)
    task = [run_kd("task", "in_domain", seed=s, **kw) for s in (0, 1)]
    scratch = [run_kd("scratch", seed=s, **kw) for s in (0, 1)]
    f = finding("task KD beats scratch", estimate(paired_runs(task, scratch)), +1)
    assert check_findings([f]) == [f] and f["n_seeds"] == 2 and f["n_test"] == load_profile("micro").n_test_2d
    manual = 100 * np.mean([t["accuracy"] - s["accuracy"] for t, s in zip(task, scratch)])
    assert math.isclose(f["effect"], manual, abs_tol=1e-9)
    ci = ci_summary(metric_estimate(task, "teacher"))
    assert ci["lo"] <= ci["mean"] <= ci["hi"] and ci["n_seeds"] == 2


# --- pretrained-student baselines (the knowledge-transfer paper's ImageNet / DINO / CLIP students) ------------------

@pytest.mark.parametrize("approach", ["pretrained_supervised", "pretrained_simclr", "pretrained_clip"])
def test_student_baseline_learns_counts_its_flops_and_its_checkpoints_reload_to_the_same_accuracy(approach, tmp_path):
    from vfm_transfer.data import make_kd_datasets, make_student_pool
    from vfm_transfer.distill import PRETRAINED_STUDENTS, finetune_student, pretrained_student
    P = load_profile("micro", teacher_pretrain_epochs=4, student_pool_size=128)  # checkpoints at epochs 1, 2 and 4
    method = PRETRAINED_STUDENTS[approach]
    r = run_kd(approach, labels_per_class=2, profile=P, device="cpu", root=tmp_path)
    _, info = pretrained_student(method, profile=P, root=tmp_path)
    assert info["loss"][-1] < info["loss"][0], info["loss"]  # the pretraining loss falls
    assert [c["epoch"] for c in r["curve"]] == [1, 2, 4] and r["curve"][-1]["correct"] == r["correct"]
    # FLOPs of the steps that ran, by hand: pool images x epochs x (views x) one step's forward + backward per image
    per_image = count_flops(build_student("student_tiny", 10 - P.n_classes_2d, P.img2d_size), (1, 3, 16, 16))["total"]
    if method == "supervised": assert info["flops_per_image_epoch"] == per_image
    assert r["flops"]["student_pretrain"] == info["flops_per_image_epoch"] * len(make_student_pool(P)) * 4
    assert r["flops"]["student_pretraining"] == r["flops"]["student_pretrain"]  # no teacher, no transfer set
    student_step = count_flops(build_student("student_tiny", P.n_classes_2d, P.img2d_size), (1, 3, 16, 16))["total"]
    assert r["flops"]["student_finetune"] == r["n_labeled"] * r["finetune_epochs"] * student_step
    # the epoch-2 checkpoint, reloaded and fine-tuned as run_kd does, scores exactly the curve's point
    data = make_kd_datasets(P, 0)
    state, mid = pretrained_student(method, profile=P, root=tmp_path, at_epoch=2)
    assert mid["flops"] == r["curve"][1]["student_pretraining_flops"]
    set_seed(0)
    s = build_student("student_tiny", P.n_classes_2d, P.img2d_size)
    s.backbone.load_state_dict(state)
    finetune_student(s, data["labeled"][2], epochs=r["finetune_epochs"], lr=P.lr, seed=0, device="cpu", batch_size=32)
    assert evaluate_2d(s, data["test"], device="cpu")["correct"] == r["curve"][1]["correct"]


def test_student_ckpt_in_timm_layout_runs_and_a_wrong_architecture_is_named(tmp_path):
    import timm
    P = load_profile("micro")
    torch.save({"state_dict": timm.create_model("test_efficientnet", num_classes=1000).state_dict()}, tmp_path / "in1k.pth")
    r = run_kd("pretrained_ckpt", labels_per_class=2, profile=P.replace(student_ckpt=str(tmp_path / "in1k.pth")),
               device="cpu", root=tmp_path)
    rep = r["student_pretraining"]["report"]
    assert rep["dropped_classifier"] == ["classifier.bias", "classifier.weight"] and rep["loaded"] > 50
    assert r["transfer"] is None and 0 <= r["metric"] <= 1
    torch.save(timm.create_model("mobilevitv2_050").state_dict(), tmp_path / "mvit.pth")
    with pytest.raises(CheckpointError, match="looks like 'mobilevitv2_050'"):
        run_kd("pretrained_ckpt", labels_per_class=2, profile=P.replace(student_ckpt={"student_tiny": str(tmp_path / "mvit.pth")}),
               device="cpu", root=tmp_path)
    with pytest.raises(ConfigError, match="student_ckpt not found"):
        run_kd("pretrained_ckpt", labels_per_class=2, profile=P.replace(student_ckpt=str(tmp_path / "none.pth")), root=tmp_path)
