"""Wall time of one micro grid (and the tiny transfer-limits grid with --tiny) under each executor: inline, local
(2 workers) and slurm (when `sinfo` answers: a running cluster, e.g. the single-node one tests/test_grid.py starts).
Each executor starts from an empty cache. Prints and saves JSON to benchmarks/results/grid.json."""
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("VFM_TRANSFER_QUIET", "1")
from vfm_transfer.core import load_profile  # noqa: E402
from vfm_transfer.grid import finetune_spec, notebook_specs, run_grid  # noqa: E402


def micro_grid():
    P = load_profile("micro")
    return [finetune_spec(t, i, P, 0) for t in ("classification", "segmentation") for i in ("scratch", "mae")]


def tiny_grid():
    return notebook_specs("transfer_limits", load_profile("tiny"), 0)


def slurm_up() -> bool:
    try: return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError): return False


def time_grid(make, executor, **opts):
    with tempfile.TemporaryDirectory() as d:
        os.environ["VFM_TRANSFER_CACHE"] = d
        t0 = time.perf_counter()
        res = run_grid(make(), executor=executor, **opts)
        return dict(seconds=round(time.perf_counter() - t0, 2), **res.summary)


def main():
    grids = {"micro": micro_grid} | ({"tiny": tiny_grid} if "--tiny" in sys.argv else {})
    out = {"cores": os.cpu_count(), "grids": {}}
    for name, make in grids.items():
        row = {"inline": time_grid(make, "inline"), "local_2_workers": time_grid(make, "local", workers=2)}
        if slurm_up():
            with tempfile.TemporaryDirectory() as logs:
                row["slurm"] = time_grid(make, "slurm", slurm_cpus=1, slurm_folder=logs, slurm_poll_s=1.0)
        else:
            row["slurm"] = "not measured: no Slurm cluster answers sinfo"
        out["grids"][name] = dict(runs=len(make()), **row)
        print(name, json.dumps(row))
    path = Path(__file__).parent / "results" / "grid.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
