# The two commands: `make demo` (whole pipeline on the embedded synthetic benchmark) and `make test`.
# Both do all set-up on a fresh machine (Debian packages when root, .venv/, the package).
PY := .venv/bin/python
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.venv/torch_extensions

.PHONY: setup demo test test-fast bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) jobs/full_vggsound.py --config clusters/local/demo.yaml $(ARGS)

test: setup
	$(PY) -m pytest -q -ra tests $(ARGS)

test-fast: setup
	$(PY) -m pytest -q -ra -m "not slow" tests $(ARGS)

bench: setup
	$(PY) -m benchmarks $(ARGS)

clean:
	rm -rf outputs runs benchmarks/out
