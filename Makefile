# The two commands of the README:  `make up`  (platform up + its main job)  and  `make test`.
# Both install exactly what uv.lock pins (hash-checked) into .venv first.
PYTHON ?= python3.11
UV := .tools/uv/bin/uv
export LITELLM_LOCAL_MODEL_COST_MAP := True
export MLFLOW_DISABLE_TELEMETRY := true
export UV_PYTHON := $(PYTHON)

.PHONY: up test demo install browser lint clean

$(UV): requirements-uv.txt
	$(PYTHON) -m venv .tools/uv
	.tools/uv/bin/pip install --quiet --require-hashes -r requirements-uv.txt
	touch $@

.venv/.synced: $(UV) uv.lock pyproject.toml
	$(UV) sync --frozen --all-extras --quiet
	touch $@

install: .venv/.synced

# Headless Chromium for the browser tests (Debian package; Playwright drives it, it never downloads one).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  [ "$$(id -u)" = 0 ] || { echo "error: Chromium is needed for the browser tests — fix: sudo apt-get install chromium" >&2; exit 1; }; \
	  echo "installing Chromium (Debian package) for the browser tests ..."; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

up: .venv/.synced
	.venv/bin/llmops up

demo: .venv/.synced
	.venv/bin/llmops demo

test: .venv/.synced browser
	.venv/bin/pytest $(PYTEST_ARGS)

lint: .venv/.synced
	.venv/bin/ruff check .
	.venv/bin/mypy

clean:
	rm -rf .venv .tools data .pytest_cache .mypy_cache .ruff_cache
