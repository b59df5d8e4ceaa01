# The two commands of the README:  `make up`  (platform up + its main job)  and  `make test`.
# Both install exactly what uv.lock pins (hash-checked) into .venv first.
PYTHON ?= python3.11
UV := .tools/uv/bin/uv
export LITELLM_LOCAL_MODEL_COST_MAP := True
export MLFLOW_DISABLE_TELEMETRY := true
export UV_PYTHON := $(PYTHON)

.PHONY: up test demo install lint typecheck clean

$(UV): requirements-uv.txt
	$(PYTHON) -m venv .tools/uv
	.tools/uv/bin/pip install --quiet --require-hashes -r requirements-uv.txt
	touch $@

.venv/.synced: $(UV) uv.lock pyproject.toml
	$(UV) sync --frozen --quiet
	touch $@

install: .venv/.synced

up: .venv/.synced
	.venv/bin/llmops up

demo: .venv/.synced
	.venv/bin/llmops demo

test: .venv/.synced
	.venv/bin/pytest $(PYTEST_ARGS)

lint: .venv/.synced
	.venv/bin/ruff check .
	.venv/bin/mypy

clean:
	rm -rf .venv .tools data .pytest_cache .mypy_cache .ruff_cache
