"""Wall time of the README's `make reproduce` from a fresh clone, install included, and seconds per notebook.

    python benchmarks/reproduce.py [--profile cpu] [--commit HEAD] [--cold] [--keep-figures DIR]
                                   [--out benchmarks/results/reproduce_<profile>.json]

Clones this repository at `--commit` into a temporary folder, runs `make reproduce PROFILE=<profile>` there (a fresh
`.venv`, so pip's install is timed too), and reads the per-notebook seconds from the clone's `MANIFEST.run.json`.
`--cold` gives the run an empty artifact cache (nothing pretrained, no teacher outputs), as on a new machine.
`--keep-figures DIR` copies the clone's figures folder to DIR before the clone is deleted (to commit what it drew).
Prints and saves JSON; asserts nothing.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--commit", default="HEAD")
    ap.add_argument("--cold", action="store_true", help="an empty artifact cache")
    ap.add_argument("--keep-figures", default=None, help="copy the clone's figures folder here")
    ap.add_argument("--log", default=None, help="stream make's output to this file (to follow a long run)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    out_path = Path(a.out or ROOT / "benchmarks" / "results" / f"reproduce_{a.profile}.json")
    with tempfile.TemporaryDirectory() as d:
        clone = Path(d) / "clone"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        subprocess.run(["git", "checkout", "-q", a.commit], cwd=clone, check=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("VFM_TRANSFER_")}
        if a.cold: env["VFM_TRANSFER_CACHE"] = str(Path(d) / "cache")
        t0 = time.perf_counter()
        cmd = ["make", "reproduce", f"PROFILE={a.profile}"]
        if a.log:
            with open(a.log, "w") as f: rc = subprocess.run(cmd, cwd=clone, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
            tail = Path(a.log).read_text()[-3000:]
        else:
            r = subprocess.run(cmd, cwd=clone, env=env, capture_output=True, text=True)
            rc, tail = r.returncode, (r.stdout + r.stderr)[-3000:]
        wall = time.perf_counter() - t0
        figures = clone / ("figures" if a.profile == _default_profile(clone) else f"figures-{a.profile}")
        run = json.loads((figures / "MANIFEST.run.json").read_text()) if (figures / "MANIFEST.run.json").exists() else {}
        if a.keep_figures and figures.exists(): shutil.copytree(figures, a.keep_figures, dirs_exist_ok=True)
        status = subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True).stdout
        res = dict(profile=a.profile, commit=subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True,
                                                            text=True).stdout.strip(),
                   cold_cache=a.cold, returncode=rc, wall_seconds=wall, run_manifest=run,
                   cpu_count=os.cpu_count(), load_avg_end=list(os.getloadavg()),
                   git_status_after=status.splitlines(), log_tail=tail)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k != "log_tail"}, indent=1))
    return rc


def _default_profile(clone: Path) -> str:
    code = "from vfm_transfer.core import DEFAULT_PROFILE; print(DEFAULT_PROFILE)"
    r = subprocess.run([str(clone / ".venv" / "bin" / "python"), "-c", code], cwd=clone, capture_output=True, text=True)
    return r.stdout.strip() or "tiny"


if __name__ == "__main__":
    sys.exit(main())
