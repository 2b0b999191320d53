"""MAE and contrastive pretraining: the loss falls, the cache is hit and survives corruption, reruns are exact,
and the MAE's encoder converts into the library's ViTEncoder without changing its output."""
import warnings

import pytest
import torch

from vfm_transfer import pretrain as P
from vfm_transfer.core import ConfigError, DataError
from vfm_transfer.encoders import build_encoder, encoder_config

# the micro geometry (16^3 volumes, 8^3 patches) with a narrow ViT: fast on a shared CPU
CFG = {**encoder_config("micro"), **dict(hidden_size=48, mlp_dim=96, num_layers=2, num_heads=2)}


def _blobs(n, size=16, seed=0):
    "Structured volumes (a few smooth Gaussian blobs per channel) so that both objectives have something to learn."
    g = torch.Generator().manual_seed(seed)
    ax = torch.arange(size, dtype=torch.float32)
    zz, yy, xx = torch.meshgrid(ax, ax, ax, indexing="ij")
    out = []
    for _ in range(n):
        img = torch.zeros(3, size, size, size)
        for c in range(3):
            for _ in range(3):
                cz, cy, cx = (torch.rand(3, generator=g) * size).tolist()
                r = 1.5 + 3 * torch.rand(1, generator=g).item()
                img[c] += torch.exp(-((zz - cz) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        out.append({"image": (img - img.mean()) / img.std()})
    return out


@pytest.fixture(scope="module")
def pool():
    try:
        from vfm_transfer.data import unlabeled_dataset
        return unlabeled_dataset("micro", seed=0)
    except ImportError:
        return _blobs(8)


@pytest.mark.parametrize("fn", [P.pretrain_mae, P.pretrain_contrastive], ids=["mae", "contrastive"])
def test_loss_falls(fn, pool):
    r = fn(CFG, pool, epochs=20, lr=1e-3, batch_size=4, seed=0, device="cpu")  # 40 steps
    assert len(r.losses) == 20 and not r.cached and r.path.exists()
    first, last = sum(r.losses[:4]) / 4, sum(r.losses[-4:]) / 4
    assert last < 0.9 * first, r.losses
    if fn is P.pretrain_contrastive:  # below the chance level log(2B - 1) of a collapsed representation
        assert last < 0.95 * torch.log(torch.tensor(7.0)).item(), r.losses


@pytest.mark.parametrize("fn", [P.pretrain_mae, P.pretrain_contrastive], ids=["mae", "contrastive"])
def test_rerun_is_exact(fn, pool):
    kw = dict(epochs=3, lr=1e-3, batch_size=2, seed=0, device="cpu")
    r = fn(CFG, pool, **kw)
    again = fn(CFG, pool, cache=False, **kw)  # retrains from scratch with the same seed
    assert not again.cached and again.losses == r.losses
    for k, v in r.encoder.state_dict().items():
        assert torch.equal(v, again.encoder.state_dict()[k]), k


def test_cache_hit_does_not_retrain(pool, monkeypatch):
    kw = dict(epochs=2, lr=1e-3, batch_size=4, seed=1, device="cpu")
    r = P.pretrain_mae(CFG, pool, **kw)

    def boom(*a, **k): raise AssertionError("retrained despite a cached checkpoint")
    monkeypatch.setattr(P, "fit", boom)
    hit = P.pretrain_mae(CFG, pool, **kw)
    assert hit.cached and hit.path == r.path and hit.losses == r.losses
    for k, v in r.encoder.state_dict().items():
        assert torch.equal(v, hit.encoder.state_dict()[k]), k
    # any change of the config is a different cache entry
    with pytest.raises(AssertionError, match="retrained"):
        P.pretrain_mae(CFG, pool, **{**kw, "seed": 2})
    with pytest.raises(AssertionError, match="retrained"):
        P.pretrain_mae(CFG, pool, mask_ratio=0.5, **kw)


def test_corrupt_cache_is_rebuilt(pool):
    kw = dict(epochs=1, lr=1e-3, batch_size=4, seed=3, device="cpu")
    r = P.pretrain_contrastive(CFG, pool, **kw)
    r.path.write_bytes(r.path.read_bytes()[:100])  # truncated
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        again = P.pretrain_contrastive(CFG, pool, **kw)
    assert not again.cached and again.losses == r.losses
    assert any("unusable" in str(x.message) for x in w)
    ck = torch.load(again.path, weights_only=True)  # the rebuilt file is a plain, safe checkpoint
    assert set(ck) >= {"state_dict", "losses", "encoder_cfg"} and ck["losses"] == r.losses


def test_objectives_share_the_random_init():
    enc = P.pretrained_encoder("random", "micro", seed=5)
    mae = P.build_mae(enc)
    back = build_encoder(**enc.cfg)
    back.load_state_dict(P._mae_to_vit(mae, back))
    for k, v in enc.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k


def test_mae_encoder_converts_exactly():
    torch.manual_seed(0)
    mae = P.build_mae(build_encoder("tiny", img_size=16, hidden_size=48, mlp_dim=96, num_layers=2, num_heads=2))
    with torch.no_grad():
        for p in mae.parameters(): p.add_(0.05 * torch.randn_like(p))  # not the init any more
    mae.eval()
    enc = build_encoder("tiny", img_size=16, hidden_size=48, mlp_dim=96, num_layers=2, num_heads=2).eval()
    enc.load_state_dict(P._mae_to_vit(mae, enc))
    x = torch.randn(2, 3, 16, 16, 16)
    with torch.no_grad():
        # MONAI's MAE encoder with nothing masked: patch embedding, CLS, blocks (the last one is the final norm)
        t = mae.patch_embedding(x)
        t = mae.blocks(torch.cat([mae.cls_token.expand(2, -1, -1), t], 1))
        tok, hidden = enc(x)
    torch.testing.assert_close(tok, t[:, 1:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(enc.last_cls, t[:, 0], rtol=1e-5, atol=1e-5)


def test_bad_arguments(pool):
    with pytest.raises(ConfigError, match="epochs"):
        P.pretrain_mae(CFG, pool, epochs=0)
    with pytest.raises(ConfigError, match="lr must be > 0"):
        P.pretrain_contrastive(CFG, pool, lr=0)
    with pytest.raises(ConfigError, match="batch_size >= 2"):
        P.pretrain_contrastive(CFG, pool, batch_size=1)
    with pytest.raises(DataError, match=r"must have shape \(3, 32, 32, 32\)"):
        P.pretrain_mae(encoder_config("tiny"), pool)
    with pytest.raises(DataError, match="empty"):
        P.pretrain_mae(CFG, [])
    with pytest.raises(ConfigError, match="unknown init 'imagenet'"):
        P.pretrained_encoder("imagenet", "micro")
    with pytest.raises(ConfigError, match="pretrain_epochs"):
        P.pretrained_encoder("mae", "paper")


def test_pretrained_encoder_front_door():
    pytest.importorskip("vfm_transfer.data")
    a = P.pretrained_encoder("contrastive", "micro", seed=0, device="cpu")
    b = P.pretrained_encoder("contrastive", "micro", seed=0, device="cpu")  # cache hit
    r = P.pretrained_encoder("random", "micro", seed=0)
    assert a.grid_size == (2, 2, 2)
    sd_a, sd_b, sd_r = a.state_dict(), b.state_dict(), r.state_dict()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert not torch.equal(sd_a["blocks.0.attn.qkv.weight"], sd_r["blocks.0.attn.qkv.weight"])
