"""Shared pytest fixtures: a private artifact cache per session so tests never touch the user's cache."""
import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("MPLBACKEND", "agg")
os.environ.setdefault("VFM_TRANSFER_QUIET", "1")


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    old = os.environ.get("VFM_TRANSFER_CACHE")
    os.environ["VFM_TRANSFER_CACHE"] = str(tmp_path_factory.mktemp("vfm_cache"))
    yield
    if old is None:
        os.environ.pop("VFM_TRANSFER_CACHE", None)
    else:
        os.environ["VFM_TRANSFER_CACHE"] = old


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    # micro models gain nothing from threads, and on the shared 2-core CPU extra threads only spin
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
