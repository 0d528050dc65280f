# The two set-up commands (`make demo`, `make test`) work on a fresh machine with only Python 3.11+:
# each creates .venv and installs the pinned dependencies (constraints.txt) on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test test-fast lint bench soak clean constraints i18n

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "sandbox-broker needs Python 3.11 or newer")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

# `make demo LANG=zh_CN.UTF-8` runs the Chinese demo (a city science and technology bureau, yuan, Beijing time).
demo: $(STAMP)
	SBX_LANG="$(LANG)" $(BIN)/sbx demo

# Re-extract the marked messages into broker/locale/*/LC_MESSAGES/messages.po and compile the .mo beside it
# (exits 1 while a message lacks its translation; tests/unit/test_i18n.py checks the committed files).
i18n: $(STAMP)
	$(BIN)/python scripts/i18n.py

# Two workers, one test file each at a time (module fixtures such as a local Ray head stay per file): the
# suite waits on subprocesses, Ray and fsync much of the time, so two workers nearly halve it on 2 cores.
# Files keep their collection order, which puts the long bank runs first (tests/conftest.py).
test: $(STAMP)
	$(BIN)/pytest -n 2 --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/pytest -m "not ray and not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(STAMP)
	@for b in bench/ledger.py bench/admission.py bench/submit.py bench/dp_query.py bench/audit.py bench/dpsgd.py bench/report.py; do \
		if [ -f $$b ]; then echo "== $$b"; $(BIN)/python $$b || exit 1; fi; \
	done

soak: $(STAMP)
	$(BIN)/python bench/soak.py

constraints:
	$(BIN)/pip freeze --exclude-editable | sed -e 's/^torch==\(.*\)+cpu$$/torch==\1/' > constraints.txt

clean:
	rm -rf $(VENV) .sbx .sbx-demo .pytest_cache .mypy_cache .ruff_cache
