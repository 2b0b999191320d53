#!/usr/bin/env bash
# Build .venv-peers: a separate venv for the MMD libraries benchmarks/mmd.py compares against.
# alibi-detect needs numpy<2, so these never go into the project's .venv. Each peer is installed on its own
# so that one failing does not stop the others; failures are logged to .venv-peers/install-<name>.log and
# benchmarks/mmd.py records them in its JSON.
# torch: the locally cached CPU wheel when there is one (no multi-GB download), else torch from the index.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
VENV=.venv-peers
if [ ! -x "$VENV/bin/python" ]; then "$PY" -m venv "$VENV" || exit 1; fi
PIP="$VENV/bin/python -m pip install -q"
$PIP "numpy<2" "scipy" > "$VENV/install-numpy.log" 2>&1 || { echo "numpy<2 failed"; exit 1; }
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  WHEEL=$(ls /opt/wheels/torch-*cpu*-cp311-*.whl 2>/dev/null | head -1)
  if [ -n "$WHEEL" ]; then $PIP "$WHEEL" "numpy<2" > "$VENV/install-torch.log" 2>&1
  else $PIP torch "numpy<2" --index-url https://download.pytorch.org/whl/cpu > "$VENV/install-torch.log" 2>&1 \
       || $PIP torch "numpy<2" > "$VENV/install-torch.log" 2>&1; fi
fi
for pkg in "alibi-detect[torch]" torchdrift hyppo; do
  name=${pkg%%[*}
  if $PIP "$pkg" "numpy<2" > "$VENV/install-$name.log" 2>&1; then echo "installed $pkg"; else echo "FAILED $pkg (see $VENV/install-$name.log)"; fi
done
"$VENV/bin/python" -m pip freeze > "$VENV/freeze.txt" 2>/dev/null
exit 0
