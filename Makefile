# Two set-up commands for a fresh machine: `make demo` and `make test`. Each installs what it needs.
# Python 3.11. The distribution's own build comes first where there is one: Debian builds its
# interpreter with profile-guided and link-time optimisation, and the ingest's own processes used
# about a sixth less CPU per message on it than on pyenv's default build, which has neither
# (docs/performance.md, session 16). Any Python 3.11 works: `make PY=/path/to/python3.11 test`.
# An existing .venv keeps the interpreter it was made with (`make clean` to change it). Debian
# ships venv support apart (python3.11-venv): without it, python3.11 from the PATH is used.
PY ?= $(or $(shell /usr/bin/python3.11 -c 'import ensurepip' >/dev/null 2>&1 && echo /usr/bin/python3.11),python3.11)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv native demo test bench lock clean

$(STAMP): requirements.lock requirements.txt pyproject.toml
	@command -v $(PY) >/dev/null || { echo "Python 3.11 is required ($(PY) not found)"; exit 1; }
	@$(PY) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || { echo "$(PY) is not Python 3.11"; exit 1; }
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
