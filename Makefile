# Two commands on a fresh Linux machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/glm4-edge
STAMP := $(VENV)/.installed
DEMO_SOURCE := models/glm4-tiny-chat
DEMO_MODEL := models/glm4-tiny-chat-int4-ov

.PHONY: venv system-deps demo test lint clean

venv: $(STAMP)

# torch is pinned in pyproject.toml ([convert]); pip takes the pinned wheel, never an unpinned one.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e '.[convert,test]'
	touch $(STAMP)

# Debian packages the browser and terminal tests use: chromium, CJK fonts, tmux.
system-deps:
	bash scripts/system-deps.sh

$(DEMO_MODEL)/glm4_edge.json: $(STAMP) $(wildcard $(DEMO_SOURCE)/*)
	$(CLI) convert $(DEMO_SOURCE) -o $(DEMO_MODEL) --weight-format int4 --force

demo: $(DEMO_MODEL)/glm4_edge.json
	$(CLI) info $(DEMO_MODEL)
	$(CLI) generate $(DEMO_MODEL) -p "What is 23+45?" --temperature 0
	$(CLI) generate $(DEMO_MODEL) -p "23加45等于多少？" --temperature 0
	printf 'Hello!\nMy name is Lumeri.\nWhat is my name?\n/exit\n' | $(CLI) chat $(DEMO_MODEL) --temperature 0
	@echo "Chat with it yourself: $(CLI) chat $(DEMO_MODEL)"

test: venv system-deps
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check glm4_edge convert tests benchmarks models

clean:
	rm -rf $(DEMO_MODEL) .pytest_cache
