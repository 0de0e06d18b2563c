# The two commands of the README: `make run` and `make test`.
.PHONY: setup run test lint bench

setup:
	bash scripts/setup.sh

run: setup
	bash scripts/run_local.sh

test:
	bash scripts/setup.sh --browser
	.venv/bin/ruff check .
	.venv/bin/python -m pytest -q -p no:cacheprovider

lint: setup
	.venv/bin/ruff check .

bench: setup
	.venv/bin/python scripts/bench.py
