# instatag: `make demo` runs the whole job on the embedded default; `make test` runs the suite.
# Both do all set-up themselves: the virtual environment, the package and WordNet for NLTK.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
SOURCE ?=
PYTEST_ARGS ?=

.PHONY: setup test demo airflow bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch and torchvision come from pip (local wheels where the machine has them), pinned.
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

$(VENV)/.system: scripts/provision_system.sh
	sh scripts/provision_system.sh
	@mkdir -p $(VENV) && touch $@

$(VENV)/.wordnet: scripts/provision_wordnet.sh $(VENV)/.system $(VENV)/.installed
	VENV=$(VENV) sh scripts/provision_wordnet.sh
	touch $@

setup: $(VENV)/.installed $(VENV)/.system $(VENV)/.wordnet

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: setup
	$(BIN)/instatag demo $(if $(SOURCE),--source $(SOURCE))

airflow: setup
	sh scripts/airflow_standalone.sh

bench: setup
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/score.py
	$(BIN)/python bench/explain.py

lint: setup
	$(BIN)/ruff check instatag dags plugins tests bench

clean:
	rm -rf var .pytest_cache
