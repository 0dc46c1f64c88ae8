# Two set-up commands for a fresh machine: `make demo` and `make test`. Each installs what it needs.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv native demo test bench lock clean

$(STAMP): requirements.lock requirements.txt pyproject.toml
	@command -v $(PY) >/dev/null || { echo "Python 3.11 is required ($(PY) not found)"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet pip==26.3
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

# The message hot path compiled with mypyc (transforms.NATIVE_MODULES): rebuilt when a source
# changed since the last build, and skipped with a warning where there is no C compiler (the
# package then runs the Python source). Cheap when nothing changed.
native: $(STAMP)
	@$(BIN)/python scripts/build_native.py --if-stale

demo: native
	$(BIN)/hl7ics demo

test: native
	scripts/ensure-chromium
	$(BIN)/python -m pytest

bench: native
	$(BIN)/python -m bench

# Regenerate the full lock from requirements.txt in a scratch venv.
lock:
	rm -rf /tmp/hl7ics-lock && $(PY) -m venv /tmp/hl7ics-lock
	/tmp/hl7ics-lock/bin/pip install --quiet -r requirements.txt
	/tmp/hl7ics-lock/bin/pip freeze --exclude-editable | grep -v '^hl7ics' > requirements.lock

clean:
	rm -rf $(VENV) var .airflow transforms/*.so transforms/native-build.json
