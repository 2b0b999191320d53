"""Query-balanced retrieval, gallery embeddings and transfer sets (vfm_transfer.retrieval)."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from conftest import ROOT  # noqa: F401  (puts the repo on the path the way the other tests do)
from vfm_transfer.core import ConfigError, DataError
from vfm_transfer.retrieval import (PROVENANCE_COLUMNS, GalleryEmbeddings, GalleryIndex, TransferSet, build_transfer_set,
                                    crop_grid, embed_gallery, embed_images, query_balanced_retrieval, random_crops,
                                    retrieval_sweep_sizes)


# ---------------------------------------------------------------- helpers
def l2(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force_balanced(q, g, k):
    """The reference: greedy over the full similarity matrix in float64, ties by (query, item) index."""
    s = l2(q) @ l2(g).T
    nq, ng = s.shape
    order = np.lexsort((np.tile(np.arange(ng), nq), np.repeat(np.arange(nq), ng), -s.ravel()))
    need, taken, out = np.full(nq, k), np.zeros(ng, bool), [[] for _ in range(nq)]
    for p in order:
        r, j = divmod(int(p), ng)
        if need[r] and not taken[j]:
            taken[j] = True; need[r] -= 1; out[r].append(j)
    return np.array(out, dtype=np.int64)


def clustered(n, d=16, n_centers=20, noise=0.3, seed=0):
    rng = np.random.default_rng(seed)
    c = np.random.default_rng(99).normal(size=(n_centers, d))
    return (c[rng.integers(0, n_centers, n)] + noise * rng.normal(size=(n, d))).astype(np.float32)


class TinyEncoder(nn.Module):
    """A stand-in encoder: conv + global average pool, (B, 3, H, W) -> (B, d)."""
    calls = 0
    fail_at = None

    def __init__(self, d=8, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, d, 3, padding=1)

    def forward(self, x):
        type(self).calls += 1
        if self.fail_at is not None and type(self).calls >= self.fail_at:
            raise RuntimeError("injected failure")
        return self.conv(x).relu().mean((2, 3)) + 1e-3


def images(n, size=12, seed=0):
    return [{"image": im, "label": torch.tensor(i % 3)}
            for i, im in enumerate(torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)))]


def kd_data():
    """The data module's micro 2-D pools and a tiny 2-D teacher, or private stand-ins if those modules are missing."""
    try:
        from vfm_transfer.data import make_kd_datasets
        from vfm_transfer.encoders import build_teacher_2d
        from torch.utils.data import Subset
        ds = make_kd_datasets("micro", seed=0)
        query = Subset(ds["test"], range(8))  # a few labelled target images as queries
        return query, ds["gallery"], build_teacher_2d("vit_tiny", img_size=ds["test"][0]["image"].shape[-1], depth=1)
    except ImportError:
        return images(8, 16, seed=1), images(96, 16, seed=2), TinyEncoder()


# ---------------------------------------------------------------- exact backends
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_backends_agree_with_numpy_brute_force(seed):
    rng = np.random.default_rng(seed)
    nq, ng, d, k = int(rng.integers(5, 40)), int(rng.integers(200, 400)), int(rng.integers(3, 24)), int(rng.integers(1, 5))
    q, g = rng.normal(size=(nq, d)), rng.normal(size=(ng, d))
    ref = brute_force_balanced(q, g, k)
    for backend in ("flat", "torch"):
        for cands in (None, k):  # k: the shortest first lists, so most queries must be searched deeper
            got = query_balanced_retrieval(q, g, k, backend=backend, candidates=cands)
            np.testing.assert_array_equal(got, ref, err_msg=f"{backend} candidates={cands}")
    # plain k-NN: both exact indexes give numpy's top-k
    truth = np.argsort(-(l2(q) @ l2(g).T), axis=1, kind="stable")[:, :5]
    for backend in ("flat", "torch"):
        np.testing.assert_array_equal(GalleryIndex(g, backend).search(q, 5)[1], truth)


def test_torch_path_chunks_merge_correctly():
    from vfm_transfer.retrieval import _torch_topk
    rng = np.random.default_rng(3)
    q, g = l2(rng.normal(size=(50, 8))).astype(np.float32), l2(rng.normal(size=(1000, 8))).astype(np.float32)
    s, i = _torch_topk(q, g, 7, q_chunk=16, g_chunk=97)
    np.testing.assert_array_equal(i, np.argsort(-(q @ g.T), axis=1, kind="stable")[:, :7])
    np.testing.assert_allclose(s, np.sort(q @ g.T, axis=1)[:, ::-1][:, :7], atol=1e-6)


def test_uses_whole_gallery_when_k_times_queries_equals_its_size():
    rng = np.random.default_rng(4)
    q, g = rng.normal(size=(30, 6)), rng.normal(size=(90, 6))
    got = query_balanced_retrieval(q, g, 3, candidates=3)
    np.testing.assert_array_equal(got, brute_force_balanced(q, g, 3))
    assert sorted(got.ravel().tolist()) == list(range(90))


def test_ties_are_broken_by_index():
    # duplicated gallery rows give exactly equal similarities: the smaller query, then the smaller item, wins
    base = np.random.default_rng(5).normal(size=(20, 4))
    g = np.repeat(base, 3, axis=0)  # items 3i, 3i+1, 3i+2 are the same vector
    q = np.concatenate([base[:4], base[:4]])  # queries r and r+4 are the same vector
    got = query_balanced_retrieval(q, g, 2, candidates=2)
    np.testing.assert_array_equal(got, brute_force_balanced(q, g, 2))
    np.testing.assert_array_equal(got[0], [0, 1])  # query 0 takes the first two copies of its own vector
    assert got[4][0] == 2  # its twin, query 4, gets the third copy
    np.testing.assert_array_equal(query_balanced_retrieval(q, g, 2, backend="torch"), got)


# ---------------------------------------------------------------- balance and contests
@pytest.mark.parametrize("backend", ["flat", "torch", "ivf", "hnsw"])
def test_every_query_gets_k_distinct_items_and_none_repeat(backend):
    g, q = clustered(600, seed=0), clustered(50, seed=1)  # queries crowd the same clusters: many contests
    for k in (1, 4, 11):
        r = query_balanced_retrieval(q, g, k, backend=backend)
        assert r.shape == (50, k) and r.dtype == np.int64
        assert r.min() >= 0 and r.max() < 600
        assert len(np.unique(r)) == r.size


def test_contested_item_goes_to_the_most_similar_query():
    deg = lambda *a: np.stack([np.cos(np.radians(a)), np.sin(np.radians(a))], 1)  # noqa: E731
    # three queries (0, 18, 12 deg) all want item 0 (at 10 deg) first; query 2 is closest to it
    g, q = deg(10, 30, -20, 60, 180, -12, 45), deg(0, 18, 12)
    s = q @ g.T
    assert (s.argmax(1) == 0).all() and s[:, 0].argmax() == 2
    idx, sims = query_balanced_retrieval(q, g, 2, return_similarity=True)
    assert idx[2, 0] == 0 and 0 not in idx[:2]
    np.testing.assert_array_equal(idx, brute_force_balanced(q, g, 2))
    np.testing.assert_allclose(sims, np.take_along_axis(s, idx, 1), atol=1e-6)
    assert (np.diff(sims, axis=1) <= 0).all()
    # a loser takes its next free neighbour: query 0's ranking is 0 (10), 5 (-12), 2 (-20), ...; query 1's is 0, 1 (30), ...
    assert idx[0, 0] == 5 and idx[1, 0] == 1


def test_balanced_equals_plain_topk_when_nothing_is_contested():
    g = l2(np.eye(12))
    q = l2(np.eye(12)[:4] + 0.01)
    r = query_balanced_retrieval(q, g, 1)
    np.testing.assert_array_equal(r[:, 0], [0, 1, 2, 3])


# ---------------------------------------------------------------- approximate backends
def test_approximate_backends_reach_high_recall_on_clustered_data():
    g, q = clustered(3000, d=32, n_centers=30), clustered(100, d=32, n_centers=30, seed=1)
    truth = GalleryIndex(g, "flat").search(q, 10)[1]
    exact_bal = query_balanced_retrieval(q, g, 5)
    for backend in ("ivf", "hnsw"):
        found = GalleryIndex(g, backend).search(q, 10)[1]
        recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])
        assert recall >= 0.95, (backend, recall)
        bal = query_balanced_retrieval(q, g, 5, backend=backend)
        overlap = len(set(bal.ravel()) & set(exact_bal.ravel())) / exact_bal.size
        assert overlap >= 0.9, (backend, overlap)


def test_ivf_falls_back_to_exact_search_when_its_lists_run_dry():
    # nprobe=1 on a gallery that is 80% used: IVF cannot supply enough candidates for many queries
    g, q = clustered(500, seed=2), clustered(40, seed=3)
    r = query_balanced_retrieval(q, g, 10, backend="ivf", nprobe=1, nlist=12)
    assert r.shape == (40, 10) and len(np.unique(r)) == 400


def test_same_seed_same_result():
    g, q = clustered(2000, seed=4), clustered(60, seed=5)
    a = query_balanced_retrieval(q, g, 4, backend="ivf", seed=7, nprobe=2)
    b = query_balanced_retrieval(q, g, 4, backend="ivf", seed=7, nprobe=2)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(query_balanced_retrieval(q, g, 4), query_balanced_retrieval(torch.from_numpy(q), g, 4))


# ---------------------------------------------------------------- bad input
def test_bad_inputs_name_the_culprit():
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(10, 8)), rng.normal(size=(50, 8))
    with pytest.raises(DataError, match=r"k=6 x n_queries=10 = 60 exceeds the gallery's 50 items"):
        query_balanced_retrieval(q, g, 6)
    with pytest.raises(DataError, match="dimension mismatch: query_emb has 4, gallery_emb has 8"):
        query_balanced_retrieval(q[:, :4], g, 2)
    with pytest.raises(DataError, match="query_emb is empty"):
        query_balanced_retrieval(q[:0], g, 2)
    qn = q.copy(); qn[2, 3] = np.nan
    with pytest.raises(DataError, match=r"query_emb has NaN or inf values in 1 row\(s\), first \[2\]"):
        query_balanced_retrieval(qn, g, 2)
    gn = g.copy(); gn[[5, 9], 0] = np.inf
    with pytest.raises(DataError, match=r"gallery_emb has NaN or inf values in 2 row\(s\), first \[5, 9\]"):
        query_balanced_retrieval(q, gn, 2)
    with pytest.raises(ConfigError, match="k must be an int >= 1"):
        query_balanced_retrieval(q, g, 0)
    with pytest.raises(ConfigError, match="unknown backend 'annoy'"):
        query_balanced_retrieval(q, g, 2, backend="annoy")
    with pytest.raises(DataError, match="must be a 2-D"):
        query_balanced_retrieval(q[0], g, 2)


# ---------------------------------------------------------------- crops
def test_crop_grid_covers_every_pixel_and_random_crops_are_seeded():
    ims = torch.rand(3, 3, 20, 17)
    crops, tab = crop_grid(ims, sizes=(8, 16), stride=5, out_size=8)
    assert crops.shape == (len(tab), 3, 8, 8) and tab.columns.tolist() == ["image", "size", "y", "x"]
    for (i, s), t in tab.groupby(["image", "size"]):
        cover = np.zeros((20, 17), bool)
        for r in t.itertuples():
            cover[r.y:r.y + s, r.x:r.x + s] = True
        assert cover.all(), (i, s)
    a, ta = random_crops(ims, n=4, scales=(0.2, 0.9), size=10, seed=3)
    b, tb = random_crops(ims, n=4, scales=(0.2, 0.9), size=10, seed=3)
    assert a.shape == (12, 3, 10, 10) and torch.equal(a, b) and ta.equals(tb)
    assert not random_crops(ims, n=4, scales=(0.2, 0.9), size=10, seed=4)[1].equals(ta)


# ---------------------------------------------------------------- gallery embeddings
def test_gallery_cache_hit_and_crash_resume(tmp_path):
    gal = images(23, seed=1)
    crops = {"kind": "grid", "sizes": (6, 12), "stride": 1.0}
    enc = TinyEncoder(); enc.fail_at = None
    TinyEncoder.calls = 0
    enc.fail_at = 4  # the 4th encoder batch raises: chunks 0-2 are written, chunk 3 is not
    with pytest.raises(RuntimeError, match="injected failure"):
        embed_gallery(enc, gal, crops=crops, chunk_size=5, batch_size=25, root=tmp_path / "a")
    part = next((tmp_path / "a" / "gallery").iterdir())
    assert json.loads((part / "progress.json").read_text())["chunks"] == [0, 1, 2]
    assert not (part / "complete.json").exists()
    with pytest.raises(DataError, match="incomplete"):
        GalleryEmbeddings(part)
    enc.fail_at = None
    calls = TinyEncoder.calls
    resumed = embed_gallery(enc, gal, crops=crops, chunk_size=5, batch_size=25, root=tmp_path / "a")
    assert TinyEncoder.calls - calls == 2  # only chunks 3 and 4
    assert resumed.path == part
    fresh = embed_gallery(TinyEncoder(), gal, crops=crops, chunk_size=5, batch_size=25, root=tmp_path / "b")
    assert (resumed.path / "embeddings.npy").read_bytes() == (fresh.path / "embeddings.npy").read_bytes()
    assert resumed.ids.equals(fresh.ids) and len(resumed) == 23 * 5
    # values: float16 copies of the in-memory embeddings of the same crops
    x, tab = crop_grid(gal, sizes=(6, 12), stride=1.0, out_size=12)
    np.testing.assert_allclose(resumed.load(), embed_images(TinyEncoder(), x), atol=2e-3)
    assert resumed.ids.equals(tab)
    # cache hit: nothing is encoded
    calls = TinyEncoder.calls
    again = embed_gallery(TinyEncoder(), gal, crops=crops, chunk_size=5, batch_size=25, root=tmp_path / "b")
    assert again.path == fresh.path and TinyEncoder.calls == calls
    # a different encoder, gallery or crop setting is a different entry
    assert embed_gallery(TinyEncoder(seed=1), gal, crops=crops, chunk_size=5, root=tmp_path / "b").path != fresh.path
    assert embed_gallery(TinyEncoder(), gal, chunk_size=5, root=tmp_path / "b").path != fresh.path
    assert embed_gallery(TinyEncoder(), images(23, seed=2), crops=crops, chunk_size=5, root=tmp_path / "b").path != fresh.path


def test_gallery_embeddings_feed_retrieval(tmp_path):
    gal = images(40, seed=3)
    ge = embed_gallery(TinyEncoder(), gal, chunk_size=16, root=tmp_path)
    q = embed_images(TinyEncoder(), torch.stack([g["image"] for g in images(5, seed=4)]))
    r = query_balanced_retrieval(q, ge, 3)
    np.testing.assert_array_equal(r, query_balanced_retrieval(q, ge.load(), 3, backend="torch"))


# ---------------------------------------------------------------- transfer sets
def test_build_transfer_set_provenance_and_items(tmp_path):
    query_ds, gallery_ds, enc = kd_data()
    nq = len(query_ds)
    crops = {"kind": "grid", "sizes": (gallery_ds[0]["image"].shape[-1] // 2,), "stride": 1.0}
    size = retrieval_sweep_sizes(nq, [2])[0]  # 3 per query
    ts = build_transfer_set(query_ds, gallery_ds, size=size, encoder=enc, crops=crops, out_dir=tmp_path / "out",
                            root=tmp_path / "cache", seed=0)
    assert isinstance(ts, TransferSet) and len(ts) == size
    prov = pd.read_csv(tmp_path / "out" / "provenance.csv")
    assert prov.columns.tolist() == PROVENANCE_COLUMNS
    assert prov.groupby("query_id").size().tolist() == [3] * nq
    assert prov.gallery_row.is_unique and prov["rank"].tolist() == [1, 2, 3] * nq
    assert (prov.crop_size == crops["sizes"][0]).all() and prov.gallery_id.between(0, len(gallery_ds) - 1).all()
    assert (prov.groupby("query_id").similarity.diff().dropna() <= 1e-6).all()  # best first within a query
    item = ts[5]
    assert list(item) == ["image"] and item["image"].shape == gallery_ds[0]["image"].shape
    gid, y, x, s = (int(v) for v in prov.loc[5, ["gallery_id", "crop_y", "crop_x", "crop_size"]])
    im = gallery_ds[gid]["image"]
    crop = im[:, y:y + s, x:x + s]
    expect = torch.nn.functional.interpolate(crop[None], size=im.shape[-2:], mode="bilinear", align_corners=False, antialias=True)[0]
    torch.testing.assert_close(item["image"], expect)
    # same seed, same set (the gallery embeddings now come from the cache)
    again = build_transfer_set(query_ds, gallery_ds, k=3, encoder=enc, crops=crops, root=tmp_path / "cache", seed=0)
    pd.testing.assert_frame_equal(again.provenance, ts.provenance)


def test_build_transfer_set_random_query_crops_and_bad_inputs(tmp_path):
    query_ds, gallery_ds = images(4, seed=5), images(40, seed=6)
    enc = TinyEncoder()
    ts = build_transfer_set(query_ds, gallery_ds, k=2, encoder=enc, query_crops={"kind": "random", "n": 3, "scales": (0.5, 1.0)},
                            root=tmp_path, seed=1)
    assert len(ts) == 4 * 3 * 2 and (ts.provenance.query_size > 0).all() and (ts.provenance.crop_size == 0).all()
    assert torch.equal(ts[0]["image"], gallery_ds[int(ts.provenance.gallery_id[0])]["image"])  # whole image, unchanged
    ts2 = build_transfer_set(query_ds, gallery_ds, k=2, encoder=enc, query_crops={"kind": "random", "n": 3, "scales": (0.5, 1.0)},
                             root=tmp_path, seed=2)
    assert not ts2.provenance[["query_y", "query_x", "query_size"]].equals(ts.provenance[["query_y", "query_x", "query_size"]])
    with pytest.raises(DataError, match="k=11 x n_queries=4 = 44 exceeds the gallery's 40 items"):
        build_transfer_set(query_ds, gallery_ds, k=11, encoder=enc, root=tmp_path / "x", out_dir=tmp_path / "o")
    assert not (tmp_path / "x").exists() and not (tmp_path / "o").exists()
    with pytest.raises(DataError, match="query_ds is empty"):
        build_transfer_set([], gallery_ds, size=4, encoder=enc, root=tmp_path)
    with pytest.raises(ConfigError, match="size=3 is smaller than the number of queries"):
        build_transfer_set(query_ds, gallery_ds, size=3, encoder=enc, root=tmp_path)
    with pytest.raises(ConfigError, match="unknown crop kind 'tiles'"):
        build_transfer_set(query_ds, gallery_ds, size=8, encoder=enc, crops={"kind": "tiles"}, root=tmp_path)
    with pytest.raises(ConfigError, match="needs an encoder"):
        build_transfer_set(query_ds, gallery_ds, size=8)


def test_embedding_dimension_mismatch_between_query_and_gallery(tmp_path):
    ge = embed_gallery(TinyEncoder(d=8), images(20, seed=7), root=tmp_path)
    q = embed_images(TinyEncoder(d=6), torch.rand(3, 3, 12, 12))
    with pytest.raises(DataError, match="query_emb has 6, gallery_emb has 8"):
        query_balanced_retrieval(q, ge, 2)


def test_sweep_sizes():
    assert retrieval_sweep_sizes(10, [1, 2, 3, 4]) == [10, 30, 70, 150]
    with pytest.raises(ConfigError, match="js must be >= 1"):
        retrieval_sweep_sizes(10, [0, 1])
