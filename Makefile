# The two commands a newcomer needs: `make demo` and `make test`.
# Both set up .venv (and system libraries) on first use via scripts/bootstrap.
VENV  := .venv
STAMP := $(VENV)/.bootstrapped

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml scripts/bootstrap
	scripts/bootstrap
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/shardline demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m pytest

bench: $(STAMP)
	for script in bench/*.py; do $(VENV)/bin/python $$script || exit 1; done

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
