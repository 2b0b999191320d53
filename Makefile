# The README's two commands are `make reproduce` and `make test`; everything else is for developers.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROFILE ?= cpu
export MPLBACKEND := agg
export PYTHONHASHSEED := 0

.PHONY: install reproduce demo-data test check-export nbtest pytest lab bench readme export clean

install: $(STAMP)

# Re-install when the package metadata changes. Fail loudly if the interpreter is missing.
$(STAMP): settings.ini setup.py
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -c "import torch, torchvision, timm, monai, faiss, papermill, nbdev; print('installed torch', torch.__version__, 'timm', timm.__version__, 'monai', monai.__version__)"
	$(BIN)/python -m ipykernel install --sys-prefix --name vfm-transfer --display-name vfm-transfer >/dev/null
	touch $(STAMP)

# figures/ for the default profile (vfm_transfer.core.DEFAULT_PROFILE), figures-<profile>/ (git-ignored) otherwise
reproduce: install
	$(BIN)/vfm-transfer reproduce --profile $(PROFILE) --jobs 2

# a small synthetic NIfTI dataset + manifest in the real-data layout (git-ignored); see data/README.md
demo-data: install
	$(BIN)/vfm-transfer make-data data/demo

test: install check-export nbtest pytest

# The library and the notebooks must agree: exporting again must not change vfm_transfer/.
check-export: install
	@rm -rf .cache/export-check && mkdir -p .cache/export-check && cp -r vfm_transfer .cache/export-check/
	$(BIN)/nbdev_export
	@diff -r -x __pycache__ .cache/export-check/vfm_transfer vfm_transfer \
	  || { echo "error: vfm_transfer/ differs from what nbs/ exports; run nbdev_export and commit"; exit 1; }

nbtest: install
	@# two notebooks run at once on two cores: one thread each avoids oversubscription
	OMP_NUM_THREADS=1 VFM_TRANSFER_QUIET=1 $(BIN)/nbdev_test --path nbs --n_workers 2 --timing

pytest: install
	@# pytest exits 5 when it collects no tests: not a failure of the code; any other non-zero exit is.
	OMP_NUM_THREADS=1 VFM_TRANSFER_QUIET=1 $(BIN)/python -m pytest tests -q -p no:cacheprovider; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests (exit 5): not a failure"; exit 0; fi; exit $$rc

# nbdev_readme needs quarto, which cannot be installed from PyPI here; nbconvert renders the same page.
readme: install
	$(BIN)/jupyter nbconvert --to markdown --execute --ExecutePreprocessor.kernel_name=vfm-transfer \
	  --TagRemovePreprocessor.enabled=True --TagRemovePreprocessor.remove_input_tags=hide-input \
	  nbs/index.ipynb --output-dir . --output README --log-level WARN

export: install
	$(BIN)/nbdev_export
	$(BIN)/nbdev_clean
	$(MAKE) readme

lab: install
	$(BIN)/jupyter lab --notebook-dir=nbs

bench: install
	@for f in benchmarks/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf .cache build dist *.egg-info
