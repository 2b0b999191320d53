"""Run grids: local workers and a real single-node Slurm cluster give the inline results; a worker SIGKILLed mid-run
does not change them; two processes racing for one run or one cache compute it once; every result-changing field
names its own run folder; `vfm-transfer runs` pre-computes a notebook so that `reproduce` only reads."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from vfm_transfer.core import EXECUTION_FIELDS, PARTS, load_profile, read_claim
from vfm_transfer.grid import comparable, finetune_spec, kd_spec, notebook_specs, run_grid

PY = sys.executable
MICRO = load_profile("micro")


def _grid(epochs=2):
    # classification and segmentation, from scratch and from the (shared, claimed) MAE pretraining cache
    return [finetune_spec(t, i, MICRO, 0, finetune_epochs=epochs) for t in ("classification", "segmentation")
            for i in ("scratch", "mae")]


def _same(a_specs, a_res, b_specs, b_res):
    assert [comparable(r) for r in a_res] == [comparable(r) for r in b_res]
    for sa, sb in zip(a_specs, b_specs):
        assert (sa.folder() / "test_metrics.json").read_bytes() == (sb.folder() / "test_metrics.json").read_bytes()
        fa = torch.load(sa.folder() / "features.pt", weights_only=True)
        fb = torch.load(sb.folder() / "features.pt", weights_only=True)
        for k in ("before", "after", "random"): assert torch.equal(fa[k], fb[k]), (sa.label(), k)


@pytest.fixture(scope="module")
def inline_ref(tmp_path_factory):
    cache = tmp_path_factory.mktemp("inline")
    old = os.environ["VFM_TRANSFER_CACHE"]; os.environ["VFM_TRANSFER_CACHE"] = str(cache)
    try:
        specs = _grid()
        res = run_grid(specs, executor="inline")
        assert res.summary == dict(runs=4, trained=4, loaded=0, failed=0)
        return specs, res
    finally: os.environ["VFM_TRANSFER_CACHE"] = old


def test_local_two_workers_equals_inline(inline_ref, tmp_path, monkeypatch):
    monkeypatch.setenv("VFM_TRANSFER_CACHE", str(tmp_path))  # spawned workers inherit it
    specs = _grid()
    res = run_grid(specs, executor="local", workers=2)
    assert res.summary == dict(runs=4, trained=4, loaded=0, failed=0)
    assert {r["pid"] for r in res.records} - {os.getpid()}, "the runs did not run in worker processes"
    _same(specs, res, *inline_ref)
    assert run_grid(specs, executor="local", workers=2).summary["loaded"] == 4  # complete: loaded, nothing trained


def test_sigkilled_worker_grid_finishes_with_uninterrupted_results(tmp_path, monkeypatch):
    epochs = 6
    ref_cache, cache = tmp_path / "ref", tmp_path / "killed"
    monkeypatch.setenv("VFM_TRANSFER_CACHE", str(ref_cache))
    ref_specs = [finetune_spec("classification", "scratch", MICRO, s, finetune_epochs=epochs) for s in (0, 1)]
    ref = run_grid(ref_specs, executor="inline")
    monkeypatch.setenv("VFM_TRANSFER_CACHE", str(cache))
    specs = [finetune_spec("classification", "scratch", MICRO, s, finetune_epochs=epochs) for s in (0, 1)]
    box = {}
    t = threading.Thread(target=lambda: box.update(res=run_grid(specs, executor="local", workers=2)))
    t.start()
    killed = None
    deadline = time.time() + 300
    while killed is None and time.time() < deadline and t.is_alive():
        for s in specs:  # a run with a checkpoint but no result: its worker is mid-run
            if (s.folder() / "last.pt").exists() and not s.done():
                pid = read_claim(s.folder()).get("pid")
                if pid and pid != os.getpid():
                    os.kill(pid, signal.SIGKILL); killed = (s, pid); break
        time.sleep(0.05)
    t.join(600)
    assert killed is not None, "no worker was caught mid-run"
    res = box["res"]
    assert res.summary["failed"] == 0 and res.summary["runs"] == 2
    assert all(r["pid"] != killed[1] for r in res.records)  # the killed run was finished by another worker
    h = res[specs.index(killed[0])]
    assert h.meta.get("resumed_from"), "the killed run did not resume from its checkpoint"
    assert [comparable(r) for r in res] == [comparable(r) for r in ref]


_RACE = textwrap.dedent("""
    import json, sys
    import vfm_transfer.finetune as ft, vfm_transfer.pretrain as pt
    count = sys.argv[2]
    def counted(mod, name):
        real = getattr(mod, name)
        def f(*a, **k):
            open(count, "a").write(name + "\\n")
            return real(*a, **k)
        setattr(mod, name, f)
    counted(ft, "finetune"); counted(pt, "fit")
    from vfm_transfer.core import load_profile
    from vfm_transfer.grid import comparable
    P = load_profile("micro")
    if sys.argv[1] == "run":
        h = ft.run_finetune("classification", "scratch", P, 0, run_dir=sys.argv[3], verbose=False, finetune_epochs=3)
        print(comparable(h))
    else:
        r = pt.pretrained_encoder("mae", profile=P, seed=0)
        print(sum(float(v.double().sum()) for v in r.state_dict().values()) if hasattr(r, "state_dict") else repr(r))
""")


@pytest.mark.parametrize("what", ["run", "cache"])
def test_two_processes_racing_compute_once(what, tmp_path):
    script, count = tmp_path / "race.py", tmp_path / "count.txt"
    script.write_text(_RACE)
    env = {**os.environ, "VFM_TRANSFER_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([PY, str(script), what, str(count), str(tmp_path / "run")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    calls = count.read_text().split()
    assert calls.count("finetune" if what == "run" else "fit") == 1, calls  # computed once
    assert outs[0][0] == outs[1][0] and outs[0][0].strip()  # both got the same result


def _perturb(v):
    if isinstance(v, bool): return not v
    if isinstance(v, int): return v + 1
    if isinstance(v, float): return v * 2 + 1
    if isinstance(v, str): return v + "_x"
    if isinstance(v, tuple): return v + (v[-1] if v else 1,)
    if v is None: return 3
    if isinstance(v, dict): return {**v, "classification": {"finetune_epochs": 3}}  # finetune_overrides: the runs here are classification
    raise AssertionError(f"no perturbation for {v!r}")


def test_every_result_field_names_its_own_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("VFM_TRANSFER_CACHE", str(tmp_path))
    base = finetune_spec("classification", "mae", MICRO, 0)
    others = {"seed": finetune_spec("classification", "mae", MICRO, 1), "task": finetune_spec("segmentation", "mae", MICRO, 0),
              "init": finetune_spec("classification", "scratch", MICRO, 0)}
    path_fields = {"manifest", "profound_ckpt", "provicnet_ckpt", "dinov2_ckpt"}  # fingerprinted files: tested in core
    own = {k for k in MICRO if k not in PARTS["3d"]}  # a fine-tuning run keys on the 3-D and shared fields only
    for k, v in MICRO.items():
        if k in EXECUTION_FIELDS or k in path_fields or k == "name" or k not in own: continue
        others[k] = finetune_spec("classification", "mae", MICRO.replace(**{k: _perturb(v)}), 0)
    folders = {k: s.folder() for k, s in others.items()}
    same = [k for k, f in folders.items() if f == base.folder()]
    assert not same, f"fields that do not change the run folder: {same}"
    for k in ("kd_epochs", "seeds", "teacher"):  # a 2-D field or the seed list never retrains a 3-D run
        assert finetune_spec("classification", "mae", MICRO.replace(**{k: _perturb(MICRO[k])}), 0).folder() == base.folder()
    for k in EXECUTION_FIELDS:  # where a run executes never changes its folder
        assert finetune_spec("classification", "mae", MICRO.replace(**{k: _perturb(MICRO[k])}), 0).folder() == base.folder()
    kd = kd_spec("task", "in_domain", 2, profile=MICRO, seed=0)
    variants = [dict(seed=1), dict(approach="feature"), dict(transfer="generic"), dict(labels_per_class=4),
                dict(task="segmentation"), dict(n_neighbors=3), dict(teacher_epoch=1), dict(batch_size=32)]
    args = dict(approach="task", transfer="in_domain", labels_per_class=2, seed=0)
    kd_folders = [kd_spec(**{**args, **v}, profile=MICRO).folder() for v in variants]
    assert kd.folder() not in kd_folders and len(set(kd_folders)) == len(variants)
    assert kd_spec(**args, profile=MICRO.replace(kd_epochs=2)).folder() != kd.folder()


# ---- a real single-node Slurm cluster, started here -------------------------------------------------------------

def _install_slurm():
    if shutil.which("slurmctld") and shutil.which("munged"): return
    if os.geteuid() != 0:
        pytest.fail("Slurm is not installed and this test is not root, so it cannot apt-get install slurm-wlm munge")
    r = subprocess.run("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge",
                       shell=True, capture_output=True, text=True, timeout=900)
    if r.returncode != 0 or not shutil.which("slurmctld"):
        pytest.fail(f"cannot install Slurm (apt-get install slurm-wlm munge, exit {r.returncode}): {r.stderr[-1500:]}")


def _wait(cond, timeout, what):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond(): return
        time.sleep(0.5)
    pytest.fail(f"slurm cluster: {what} within {timeout}s")


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    _install_slurm()
    if os.geteuid() != 0: pytest.fail("the test cluster runs its daemons as root (SlurmUser=root); run the test as root")
    d = tmp_path_factory.mktemp("slurm")
    host = socket.gethostname()
    for sub in ("state", "spool", "log", "munge"): (d / sub).mkdir()
    key = d / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024)); key.chmod(0o400)
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    sock = Path("/run/munge/munge.socket.2")  # the socket libmunge looks for (sbatch, the daemons and the jobs)
    pidf = Path("/run/munge/munged.pid")
    if sock.exists():
        pid = int(pidf.read_text().strip() or 0) if pidf.exists() else 0
        if pid and Path(f"/proc/{pid}").exists():
            pytest.fail(f"a munged (pid {pid}) already serves {sock}; stop it or run this test on a clean machine")
        sock.unlink()  # left by a munged that is gone
    cpus = os.cpu_count() or 1
    mem = max(1024, int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.8))
    conf = d / "slurm.conf"
    conf.write_text(textwrap.dedent(f"""
        ClusterName=vfmtest
        SlurmctldHost={host}
        SlurmUser=root
        SlurmdUser=root
        AuthType=auth/munge
        CredType=cred/munge
        MpiDefault=none
        ProctrackType=proctrack/linuxproc
        TaskPlugin=task/none
        SelectType=select/cons_tres
        SelectTypeParameters=CR_Core
        ReturnToService=2
        StateSaveLocation={d}/state
        SlurmdSpoolDir={d}/spool
        SlurmctldPidFile={d}/slurmctld.pid
        SlurmdPidFile={d}/slurmd.pid
        SlurmctldLogFile={d}/log/slurmctld.log
        SlurmdLogFile={d}/log/slurmd.log
        SlurmctldPort=16817
        SlurmdPort=16818
        JobAcctGatherType=jobacct_gather/none
        AccountingStorageType=accounting_storage/none
        SchedulerType=sched/backfill
        MaxArraySize=1000
        NodeName={host} CPUs={cpus} RealMemory={mem} State=UNKNOWN
        PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
    """).lstrip())
    env = {**os.environ, "SLURM_CONF": str(conf)}
    procs = []
    munged = subprocess.Popen(["munged", "-F", "--force", f"--key-file={key}", f"--socket={sock}",
                               f"--pid-file={pidf}", f"--log-file={d}/munge/munged.log",
                               f"--seed-file={d}/munge/munged.seed"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(munged)
    _wait(sock.exists, 30, "munged did not open its socket")
    try:
        procs.append(subprocess.Popen(["slurmctld", "-D", "-i", "-f", str(conf)], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        procs.append(subprocess.Popen(["slurmd", "-D", "-f", str(conf)], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        def idle():
            r = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True)
            return r.returncode == 0 and r.stdout.strip() in ("idle", "mix", "alloc")
        try: _wait(idle, 90, "the node did not become idle")
        except BaseException:
            logs = "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in (d / "log").glob("*.log"))
            raise AssertionError(f"slurm did not start:\n{logs}")
        yield env
    finally:
        for p in reversed(procs):  # only the daemons this test started, by their process ids
            if p.poll() is None: p.terminate()
        for p in reversed(procs):
            try: p.wait(20)
            except subprocess.TimeoutExpired: p.kill(); p.wait()


def test_slurm_grid_equals_inline(slurm_cluster, inline_ref, tmp_path, monkeypatch):
    for k, v in slurm_cluster.items(): monkeypatch.setenv(k, v)
    monkeypatch.setenv("VFM_TRANSFER_CACHE", str(tmp_path / "cache"))  # the jobs inherit it (sbatch exports the env)
    specs = _grid()
    res = run_grid(specs, executor="slurm", slurm_cpus=1, slurm_time_min=20, slurm_array_parallelism=2,
                   slurm_folder=str(tmp_path / "logs"), slurm_poll_s=1.0)
    assert res.summary == dict(runs=4, trained=4, loaded=0, failed=0), res.records
    assert all(r.get("job_id") for r in res.records)
    _same(specs, res, *inline_ref)


# ---- the CLI: pre-compute a notebook's grid, then reproduce only reads ---------------------------------------------

def test_runs_then_reproduce_trains_nothing(tmp_path):
    env = {**os.environ, "VFM_TRANSFER_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "MPLBACKEND": "agg"}
    cli = str(Path(PY).parent / "vfm-transfer")
    r = subprocess.run([cli, "runs", "kd_compute", "--profile", "micro", "--executor", "local", "--workers", "2"],
                       env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    n = sum(len(notebook_specs("kd_compute", MICRO, s)) for s in MICRO.seeds)  # the notebook runs its grid per seed
    assert out == dict(runs=n, trained=n, loaded=0, failed=0, run_root=str(tmp_path / "cache")), out
    def snapshot():
        return {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*") if p.is_file()}
    before = snapshot()
    r = subprocess.run([cli, "reproduce", "--profile", "micro", "--only", "kd_compute", "--out", str(tmp_path / "figs"),
                        "--notebooks", str(ROOT / "nbs" / "experiments")], env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    after = snapshot()
    new = sorted(str(p) for p in set(after) - set(before))
    changed = sorted(str(p) for p in before if p in after and after[p] != before[p])
    assert not new and not changed, f"reproduce trained or wrote: new {new[:5]}, changed {changed[:5]}"
    r = subprocess.run([cli, "runs", "kd_compute", "--profile", "micro", "--executor", "inline"], env=env,
                       capture_output=True, text=True, timeout=900)
    assert json.loads(r.stdout.strip().splitlines()[-1])["loaded"] == n
