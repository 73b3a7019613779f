# Two entry points for a fresh Debian machine: `make run` and `make test`.
# Both install what they need (apt packages, .venv, restic 0.18) on first use.

PY      := .venv/bin/python
DATA    ?= $(HOME)/.local/share/restic-manager
PYTEST_ARGS ?=

.PHONY: bootstrap run serve screenshots test lint typecheck unit integration fmt clean bench dist fuzz soak

bootstrap:
	@bash scripts/bootstrap.sh

# The desktop app (window + tray + embedded control plane).
run: bootstrap
	.venv/bin/restic-manager --data-dir "$(DATA)"

# The same control plane without a GUI.
serve: bootstrap
	.venv/bin/restic-manager serve --data-dir "$(DATA)"

# PNGs of every main view under a real X server (Xvfb), into screenshots/.
screenshots: bootstrap
	xvfb-run -a -s "-screen 0 1920x1200x24" $(PY) scripts/screenshots.py screenshots

lint: bootstrap
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

typecheck: bootstrap
	.venv/bin/mypy agent server_core app ui_qt

unit: bootstrap
	$(PY) -m pytest tests/unit -q $(PYTEST_ARGS)

integration: bootstrap
	$(PY) -m pytest tests/integration -q $(PYTEST_ARGS)

test: bootstrap lint typecheck
	$(PY) -m pytest tests -q -p no:cacheprovider $(PYTEST_ARGS)

# Benchmarks (not part of `make test`; they measure, they do not fail on a slow
# machine): one JSON file each in tests/perf/results/, then the table in
# BENCHMARKS.md; ~11 min on 2 cores (~13 the first time, generating its data).
# `make bench-NAME` runs one, `make bench-summary` rewrites the table.
# Offscreen Qt, so no X server is needed; see tests/perf/README.md. Every
# benchmark runs even if one crashes; the exit status says whether any did.
BENCHES := fleet-capacity log-ingest agent-overhead agent-footprint app-start \
	loop-lag fleet-table job-log restore-browse
.PHONY: $(addprefix bench-,$(BENCHES)) bench-summary
bench: bootstrap
	@failed=""; for b in $(BENCHES); do \
		start=$$(date +%s); \
		$(MAKE) --no-print-directory bench-$$b || failed="$$failed $$b"; \
		echo "== bench-$$b: $$(( $$(date +%s) - start )) s"; \
	done; \
	$(PY) tests/perf/summarise.py; \
	if [ -n "$$failed" ]; then echo "benchmarks that crashed:$$failed"; exit 1; fi
$(addprefix bench-,$(BENCHES)): bench-%: bootstrap
	QT_QPA_PLATFORM=offscreen $(PY) tests/perf/bench_$(subst -,_,$*).py
bench-summary:
	$(PY) tests/perf/summarise.py

# Hostile input at full size (`make test` runs the same tests with a small
# budget): 100k fuzzed agent WebSocket frames, floods, a long schemathesis run
# against a live control plane, large inputs. Figures go to tests/fuzz/results/
# for RELIABILITY.md.
fuzz: bootstrap
	FUZZ_SCALE=20 FUZZ_WS_FRAMES=100000 FUZZ_API_EXAMPLES=250 FUZZ_RESULTS=tests/fuzz/results \
		$(PY) -m pytest tests/fuzz -q -p no:cacheprovider --timeout=7200 $(PYTEST_ARGS)

# Faults during backups at full size (`make test` runs a small variant: two
# agents, one fault of each kind): three agents in network namespaces, real
# restic, 50 faults (link cuts up to 120 s, control plane, agent and restic
# killed with SIGKILL). Figures go to tests/soak/results/ for RELIABILITY.md.
# SOAK_FAULTS=N and SOAK_SEED=N override the count and the seed. The fault
# soak alone takes ~20 min on 2 cores.
soak: bootstrap
	SOAK_FULL=1 SOAK_RESULTS=tests/soak/results \
		$(PY) -m pytest tests/soak -q -p no:cacheprovider --timeout=14400 $(PYTEST_ARGS)

# The one-file agent (dist/agents/) and the one-folder desktop app
# (dist/restic-manager/, smoke-checked), each rebuilt only when its inputs
# changed. See packaging/README.md.
dist: bootstrap
	$(PY) packaging/build.py all

fmt: bootstrap
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

clean:
	rm -rf .venv .cache .mypy_cache .ruff_cache .pytest_cache dist build
