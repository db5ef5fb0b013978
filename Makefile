# Two entry points: `make demo` (the main job) and `make test`.
# Both install whatever is missing first (scripts/bootstrap).
.PHONY: demo test setup
setup:
	@scripts/bootstrap
demo: setup
	.venv/bin/tradeflow demo
test:
	@scripts/bootstrap --browser
	.venv/bin/python -m pytest -q
