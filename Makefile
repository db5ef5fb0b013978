# Two entry points: `make demo` (the main job) and `make test`.
# Both install whatever is missing first (scripts/bootstrap).
# `make test` checks first (ruff, mypy on the runtime and what it runs, the import layers), then runs the
# suite: in parallel (TEST_WORKERS processes) what may share the machine, then two at a time what kills
# and restarts servers mid-stream (-m faults), then one at a time what measures time or CPU (-m serial).
TEST_WORKERS ?= 4
.PHONY: demo test check setup
setup:
	@scripts/bootstrap
demo: setup
	.venv/bin/tradeflow demo
check:
	@scripts/bootstrap
	.venv/bin/ruff check .
	.venv/bin/mypy
	.venv/bin/lint-imports --no-cache
test: check
	@scripts/bootstrap --browser
	.venv/bin/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m "not serial and not faults"
	.venv/bin/python -m pytest -q -n 2 -m faults
	.venv/bin/python -m pytest -q -m serial
