"""Integration tests of the fine-tuning engine on the micro profile: every task, every mode, files, errors."""
import json
import math

import pytest
import torch

from vfm_transfer.core import CheckpointError, ConfigError, load_profile, set_seed
from vfm_transfer.data import TASKS, TASK_SPECS, make_task_dataset
from vfm_transfer.encoders import build_encoder, encoder_config
from vfm_transfer.finetune import (History, build_specialised, evaluate, finetune, load_checkpoint, param_groups,
                                   run_finetune, TaskModel)
from vfm_transfer.heads import build_head

P = load_profile("micro")


def _data(task, n_train=4, n_val=2):
    p = P.replace(n_train=n_train, n_val=n_val)
    return make_task_dataset(task, "train", p, seed=0), make_task_dataset(task, "val", p, seed=0)


def _model(task, seed=0):
    set_seed(seed)
    enc = build_encoder(**encoder_config(P))
    return enc, build_head(task, enc)


def _numbers(h):
    return [{k: v for k, v in r.items() if k not in ("seconds", "train_seconds")} for r in h.rows]


@pytest.mark.parametrize("task", TASKS)
def test_every_task_trains_and_reports_its_metrics(task):
    train, val = _data(task)
    enc, head = _model(task)
    h = finetune(enc, head, task, train, val, epochs=2, batch_size=2, device="cpu", verbose=False)
    spec = TASK_SPECS[task]
    assert list(h.to_frame().columns) == ["epoch", "train_loss", *spec["metrics"], "lr", "seconds", "train_seconds"]
    assert [r["epoch"] for r in h.rows] == [1, 2]
    assert all(math.isfinite(r["train_loss"]) for r in h.rows)
    assert h.rows[-1]["lr"] == 0.0 and h.rows[0]["lr"] == pytest.approx(1e-3)  # warm-up done, cosine ends at 0
    for m in spec["metrics"]:
        if m != "auc":  # AUC is NaN when a 2-item validation set holds one class
            assert math.isfinite(h.rows[-1][m]), (m, h.rows[-1])
    test = evaluate(enc, head, task, val, device="cpu")
    assert list(test) == list(spec["metrics"])
    assert test[spec["main_metric"]] == pytest.approx(h.rows[-1][spec["main_metric"]], nan_ok=True)


def test_modes_frozen_full_scratch():
    task = "synthesis"
    train, val = _data(task)
    ref = {k: v.clone() for k, v in _model(task)[0].state_dict().items()}
    enc, head = _model(task)
    head0 = {k: v.clone() for k, v in head.state_dict().items()}
    finetune(enc, head, task, train, val, mode="frozen", epochs=1, batch_size=2, device="cpu", verbose=False)
    assert all(torch.equal(v, ref[k]) for k, v in enc.state_dict().items())  # the encoder did not move
    assert not all(torch.equal(v, head0[k]) for k, v in head.state_dict().items())  # the head did
    enc, head = _model(task)
    finetune(enc, head, task, train, val, mode="full", epochs=1, batch_size=2, device="cpu", verbose=False)
    assert not all(torch.equal(v, ref[k]) for k, v in enc.state_dict().items())
    # scratch re-initialises the encoder with the run's seed, whatever it held before
    runs = []
    for pre_seed in (1, 2):
        enc, head = _model(task, seed=pre_seed)
        head.load_state_dict(head0)
        runs.append(_numbers(finetune(enc, head, task, train, val, mode="scratch", epochs=1, batch_size=2, seed=5,
                                      device="cpu", verbose=False)))
    assert runs[0] == runs[1]


def test_same_seed_same_numbers_other_seed_other_numbers():
    task = "classification"
    train, val = _data(task, n_train=6)
    hs = []
    for seed in (0, 0, 1):
        enc, head = _model(task)
        hs.append(_numbers(finetune(enc, head, task, train, val, epochs=2, batch_size=2, seed=seed, device="cpu",
                                    verbose=False)))
    assert hs[0] == hs[1]
    assert hs[0] != hs[2]


def test_bad_parameters_fail_before_training(tmp_path):
    train, val = _data("segmentation")
    enc, head = _model("segmentation")
    ok = dict(epochs=1, batch_size=2, device="cpu", ckpt_dir=tmp_path, verbose=False)
    bad = [
        (dict(task="detection"), "unknown task 'detection'"),
        (dict(mode="linear"), "unknown mode 'linear'"),
        (dict(epochs=0), "epochs must be an int >= 1"),
        (dict(train_ds=[]), "train_ds is empty"),
        (dict(val_ds=[]), "val_ds is empty"),
        (dict(lr=0.0), "lr must be > 0"),
        (dict(layer_decay=1.5), "layer_decay must be in (0, 1]"),
        (dict(loss="huber"), "unknown loss 'huber'"),
        (dict(head=build_head("classification", enc)), "does not fit task 'segmentation'"),
    ]
    small = build_encoder(**encoder_config(P), hidden_size=96, mlp_dim=96, num_heads=2)
    bad.append((dict(head=build_head("segmentation", small)), "expects tokens (B, 8, 96)"))  # the head names the misfit
    for change, msg in bad:
        kw = dict(encoder=enc, head=head, task="segmentation", train_ds=train, val_ds=val, **ok)
        kw.update(change)
        with pytest.raises(ConfigError, match=None) as e:
            finetune(**kw)
        assert msg in str(e.value), (change, str(e.value))
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_checkpoint_is_safe_and_resume_refuses_other_settings(tmp_path):
    task = "super_resolution"
    train, val = _data(task)
    enc, head = _model(task)
    h = finetune(enc, head, task, train, val, epochs=2, batch_size=2, ckpt_dir=tmp_path, device="cpu", verbose=False)
    ck = torch.load(tmp_path / "last.pt", weights_only=True)  # plain types only
    assert ck["epoch"] == 2 and len(ck["history"]) == 2
    assert set(ck["rng"]) == {"python", "numpy", "torch", "loader", "cuda"}
    # complete: a second call reloads the history, trains nothing, and leaves the weights as they are
    enc2, head2 = _model(task)
    h2 = finetune(enc2, head2, task, train, val, epochs=2, batch_size=2, ckpt_dir=tmp_path, device="cpu", verbose=False)
    assert h2.rows == h.rows
    assert all(torch.equal(v, enc.state_dict()[k]) for k, v in enc2.state_dict().items())
    with pytest.raises(CheckpointError, match="other settings"):
        finetune(*_model(task), task, train, val, epochs=3, batch_size=2, ckpt_dir=tmp_path, device="cpu")
    (tmp_path / "last.pt").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="cannot read training checkpoint"):
        load_checkpoint(tmp_path / "last.pt")


def test_layer_decay_and_amp_on_cpu():
    task = "classification"
    enc, head = _model(task)
    groups = param_groups(TaskModel(enc, head), lr=1e-3, layer_decay=0.75)
    lr_of = {g["layer"]: g["lr"] for g in groups}
    assert lr_of[enc.num_layers + 1] == pytest.approx(1e-3)
    assert lr_of[0] == pytest.approx(1e-3 * 0.75 ** (enc.num_layers + 1))
    assert all(g["weight_decay"] == 0 for g in groups if any(p.ndim <= 1 for p in g["params"]))
    train, val = _data(task)
    h = finetune(enc, head, task, train, val, epochs=1, batch_size=2, layer_decay=0.75, amp=True, device="cpu",
                 verbose=False)
    assert math.isfinite(h.rows[0]["train_loss"])


def test_run_finetune_scratch_and_specialised_write_the_run_dir(tmp_path):
    kw = dict(profile="micro", n_train=4, n_val=2, n_test=3, finetune_epochs=1, verbose=False)
    d = tmp_path / "segmentation" / "scratch"
    h = run_finetune("segmentation", "scratch", run_dir=d, **kw)
    assert sorted(p.name for p in d.iterdir()) == ["features.pt", "history.csv", "history.json", "last.pt",
                                                    "test_cases.json", "test_metrics.json"]
    f = torch.load(d / "features.pt", weights_only=True)
    assert (f["task"], f["init"], f["seed"]) == ("segmentation", "scratch", 0)
    assert f["before"].shape == f["after"].shape == f["random"].shape == (3, 192)
    assert f["before"].dtype == torch.float32
    assert torch.equal(f["before"], f["random"])  # scratch starts from the random init
    assert not torch.equal(f["before"], f["after"])
    test = json.loads((d / "test_metrics.json").read_text())
    assert set(test) == {"dice", "dice_gland", "dice_lesion"} and h.meta["test"] == test
    assert h.rows[0]["epoch"] == 0 and math.isnan(h.rows[0]["train_loss"])  # the untrained model's row
    assert History.load(d / "history.json").rows[1:] == h.rows[1:]
    assert run_finetune("segmentation", "scratch", run_dir=d, **kw).rows[1:] == h.rows[1:]  # complete: loaded
    cases = json.loads((d / "test_cases.json").read_text())
    assert len(cases["case_id"]) == 3 and cases["baseline"] is None and h.main_metric == "dice_gland"
    assert sum(cases["values"]["dice_gland"]) / 3 == pytest.approx(test["dice_gland"])
    with pytest.raises(ConfigError, match="unknown run_finetune option"):
        run_finetune("segmentation", "scratch", run_dir=d, epochz=2)

    d2 = tmp_path / "classification" / "specialised"
    h2 = run_finetune("classification", "specialised", run_dir=d2, **kw)
    assert not (d2 / "features.pt").exists() and (d2 / "test_metrics.json").exists()
    assert set(h2.meta["test"]) == {"auc", "accuracy"}
    assert build_specialised("segmentation")(torch.randn(1, 3, 16, 16, 16)).shape == (1, 3, 16, 16, 16)


def test_zero_tokens_control_differs_from_the_real_head_after_training(tmp_path):
    # the same task, seed and data: one head reads the encoder's tokens, the control reads zeros in their place
    kw = dict(profile="micro", n_train=4, n_val=2, n_test=2, finetune_epochs=2, verbose=False)
    real = run_finetune("super_resolution", "scratch", run_dir=tmp_path / "real", **kw)
    ctl = run_finetune("super_resolution", "zero_tokens", run_dir=tmp_path / "ctl", **kw)
    assert ctl.meta["mode"] == "frozen" and ctl.meta.get("zero_tokens") is True
    assert not (tmp_path / "ctl" / "features.pt").exists()  # a control has no encoder features to compare
    a = json.loads((tmp_path / "real" / "test_cases.json").read_text())
    b = json.loads((tmp_path / "ctl" / "test_cases.json").read_text())
    assert a["case_id"] == b["case_id"] and a["baseline"] == b["baseline"]  # paired: same cases, same identity
    assert a["values"]["psnr"] != b["values"]["psnr"]
    # and directly: after training, the zeroed head's output ignores what the encoder says
    train, val = _data("super_resolution")
    enc, head = _model("super_resolution")
    finetune(enc, head, "super_resolution", train, val, epochs=1, batch_size=2, device="cpu", verbose=False)
    x = val[0]["input"][None]
    with torch.no_grad():
        y_real, y_zero = TaskModel(enc, head)(x), TaskModel(enc, head, zero_tokens=True)(x)
    assert not torch.allclose(y_real, y_zero)
    with pytest.raises(ConfigError, match="control for dense tasks"):
        run_finetune("classification", "zero_tokens", run_dir=tmp_path / "c", **kw)


def test_specialised_restoration_baseline_has_the_identity_shortcut():
    x = torch.randn(1, 3, 16, 16, 16)
    for task, base in (("super_resolution", [0, 1, 2]), ("distortion_correction", [1, 2])):
        y = build_specialised(task)(x)
        assert (y - x[:, base]).abs().mean() < 0.05 * x[:, base].abs().mean()  # starts at the degraded input
        plain = build_specialised(task, residual=False)(x)
        assert (plain - x[:, base]).abs().mean() > 0.1
