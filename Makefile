# Two set-up commands for a fresh machine: `make demo` and `make test`. Each installs what it needs.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test bench lock clean

$(STAMP): requirements.lock requirements.txt pyproject.toml
	@command -v $(PY) >/dev/null || { echo "Python 3.11 is required ($(PY) not found)"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet pip==26.3
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/hl7ics demo

test: $(STAMP)
	scripts/ensure-chromium
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python -m bench

# Regenerate the full lock from requirements.txt in a scratch venv.
lock:
	rm -rf /tmp/hl7ics-lock && $(PY) -m venv /tmp/hl7ics-lock
	/tmp/hl7ics-lock/bin/pip install --quiet -r requirements.txt
	/tmp/hl7ics-lock/bin/pip freeze --exclude-editable | grep -v '^hl7ics' > requirements.lock

clean:
	rm -rf $(VENV) var .airflow
