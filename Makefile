# The two commands: `make demo` (set up + run the main job) and `make test` (set up + run the tests).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup test test-fast demo lint clean

$(VENV)/.xwam-installed: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh

setup: $(VENV)/.xwam-installed

test: setup
	$(VENV)/bin/ruff check src tests benchmarks
	MUJOCO_GL=$${MUJOCO_GL:-egl} PYOPENGL_PLATFORM=$${PYOPENGL_PLATFORM:-egl} $(PY) -m pytest -q -m "not benchmark"

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not benchmark"

demo: setup
	MUJOCO_GL=$${MUJOCO_GL:-egl} PYOPENGL_PLATFORM=$${PYOPENGL_PLATFORM:-egl} $(VENV)/bin/xwam demo $(DEMO_ARGS)

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) .venv-openpi .pytest_cache build dist src/*.egg-info
