# Isolation Kit: `make demo` runs the main job, `make test` runs the tests.
# Each target does its own set-up first and is idempotent.

SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
#: pytest workers in make test (pytest-xdist); 1 runs the suite in one process
TEST_WORKERS ?= 2
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export KIT_HOME ?= $(HOME)/.cache/kit

# Debian/Ubuntu packages the runtimes, images and VMs need; the last line builds the kit's own guest
# kernel from Debian's kernel source (kit/vm/kernel.config).
SYSTEM_PACKAGES := runc crun lxc runsc docker.io podman busybox-static debootstrap e2fsprogs \
	cpio kmod qemu-system-x86 qemu-utils hyperfine redis-tools file iproute2 ca-certificates \
	chromium chromium-driver redis-server mariadb-server docker-registry skopeo openssh-server \
	sysbench fio iperf3 socat criu uidmap \
	linux-source-6.1 flex bison libelf-dev libssl-dev bc gcc make libc6-dev

.PHONY: render-notebooks setup user-check rootless-user system-packages venv dockerd guest-kernel kit-kernel images lab test \
	test-fast demo demo-setup setup-rest bench clean docs docs-serve

# Everything the tests, notebooks and benchmarks use. The kit's kernel (minutes of CPU) builds beside
# the Debian images (mostly downloads and disk), so together they take about as long as either.
setup: user-check system-packages venv dockerd guest-kernel
	@$(MAKE) --no-print-directory -j2 kit-kernel images

# As an ordinary user: what the kit needs from root (subordinate IDs, docker group, /dev/kvm), said first.
user-check:
	@[ "$$(id -u)" = 0 ] || bash scripts/user-check

# The ordinary user tests/test_rootless.py runs as, with a venv it can read (the test makes it too).
rootless-user: venv system-packages
	$(SUDO) scripts/rootless-user

system-packages:
	@missing=""; for p in $(SYSTEM_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		if [ -n "$(SUDO)" ] && ! sudo -n true 2>/dev/null; then \
			echo "system packages missing:$$missing; installing them needs root: run 'sudo make system-packages'" \
				"(or ask your administrator), then make setup again" >&2; exit 1; \
		fi; \
		echo "installing system packages:$$missing"; \
		$(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	fi

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[test,docs]'
	touch $@

venv: $(VENV)/.installed

# Start dockerd in the background unless a daemon already answers.
dockerd: system-packages
	@docker version --format '{{.Server.Version}}' >/dev/null 2>&1 || $(SUDO) bash scripts/ensure-dockerd

guest-kernel: venv system-packages
	$(BIN)/python -m kit.vm.kernel fetch --with-9p

# The kit's own guest kernel, built once from linux-source (cached under $$KIT_HOME/kernels/kit-*): VMs
# boot it by default once it is there, and Debian's kernel (above) until then, saying why. A failed
# build does not fail the set-up: its reason is recorded, and VMs boot Debian's kernel meanwhile.
kit-kernel: venv system-packages
	@$(BIN)/python -m kit.vm.kernel build || \
		echo "kit kernel: not built; VMs boot Debian's kernel ('python -m kit.vm.kernel list' says why)"

# The service images the notebooks and tests use, built once with debootstrap and cached
# under $$KIT_HOME (about a minute for Redis, a few for MariaDB, the first time).
images: venv system-packages
	@if [ "$$(id -u)" = 0 ]; then $(BIN)/python -m kit.images.prebuild; else \
		echo "make images: skipped: the Debian images are built with debootstrap, which needs root" \
			"(busybox and registry or Docker images work as an ordinary user)"; fi

# JupyterLab from the venv, on 127.0.0.1 only, with the notebooks folder open: it prints its URL
# with the login token (open that address in a browser on this machine; Ctrl-C stops it).
LAB_PORT ?= 8888
lab: setup
	$(BIN)/jupyter lab --ip 127.0.0.1 --port $(LAB_PORT) --no-browser --notebook-dir notebooks \
		$$([ "$$(id -u)" = 0 ] && echo --allow-root)

# Which module may import which first (pyproject.toml's import-linter contracts: seconds), the docs
# site (strict), then the tests.
test: setup
	$(BIN)/lint-imports
	@$(MAKE) --no-print-directory docs
	@# Two workers (pytest-xdist): most tests wait on runtimes, daemons and guests, not on the CPU.
	@# Tests that share a host-wide setting or stop a daemon everyone uses (conftest's SERIAL, marked
	@# serial) run alone afterwards. Both parts always run.
	$(BIN)/pytest -q -rs --durations=15 -n $(TEST_WORKERS) -m "not serial"; p=$$?; \
	$(BIN)/pytest -q -rs -m serial; s=$$?; exit $$(( p || s ))

# The docs site's notebook pages from a fresh clone: every notebook run with its quick parameters,
# the executed copies kept in notebooks/executed/ (commit them after a run on a quiet machine).
render-notebooks: setup
	$(BIN)/python scripts/render_notebooks.py

# The documentation site (mkdocs.yml, docs/) into site/, strict: a broken link, a missing page or an
# unresolved API reference fails it. The metrics reference, the layer pictures and the notebook pages
# are generated at build time (docs/_hooks/kit_docs.py); a notebook page shows its newest executed copy
# from reports/ (kit report NAME), else the committed run in notebooks/executed/ (make render-notebooks),
# else the notebook without outputs.
export NO_MKDOCS_2_WARNING := 1
docs: venv
	$(BIN)/mkdocs build --strict --quiet
	@echo "docs: site/index.html ($$(find site -name index.html | wc -l) pages)"

# The same site served on 127.0.0.1 only, rebuilt on each change (DOCS_PORT=8001 for another port).
DOCS_PORT ?= 8000
docs-serve: venv
	$(BIN)/mkdocs serve --strict -a 127.0.0.1:$(DOCS_PORT)

# The fast half: everything not marked slow.
test-fast: setup
	$(BIN)/pytest -q -m "not slow"

# The main job: the containers-vs-VMs study as a dated report in reports/<date>-<host>/,
# with a screenshot of its HTML taken by headless Chromium. It sets up only what notebook 02 uses
# (its busybox image is made on first use); the rest of the set-up follows in the background.
demo: demo-setup
	@out=$$($(BIN)/kit report 02-containers-vs-vms) && echo "report: $$out" && \
	$(BIN)/python scripts/screenshot_report.py "$$out/02-containers-vs-vms.html" && \
	echo "open $$out/02-containers-vs-vms.html in a browser"
	@$(MAKE) --no-print-directory setup-rest

# Debian's cloud kernel is what the demo's VMs boot until the kit's own is built.
demo-setup: user-check system-packages venv dockerd
	$(BIN)/python -m kit.vm.kernel fetch

# What the demo did not need (the kit's kernel, the Debian images, the kernel for volumes), after the
# demo so that it measures a quiet machine, in the background at the lowest priority; each build
# is locked, so a 'make setup' meanwhile waits for it rather than building twice.
SETUP_LOG := $(KIT_HOME)/setup-rest.log
setup-rest:
	@mkdir -p "$(KIT_HOME)" && \
	nohup nice -n 19 $(MAKE) --no-print-directory -j2 guest-kernel kit-kernel images >"$(SETUP_LOG)" 2>&1 </dev/null & \
	echo "the rest of the set-up (the kit's guest kernel, the Debian images) continues in the background:" \
		"tail -f $(SETUP_LOG)"

# Regenerates benchmarks/results/: the default study, kit vs hyperfine, kit vs each runtime's own
# command line, a study's clock against an outside one, the VM boot comparison and the guest kernels',
# load, the forwarder, warm starts and VM restores, start storms against the plain CLI and density with
# KSM; each script writes its folder's record.json. A script whose target is missed exits non-zero after
# writing its results: the others still run, and make bench fails at the end naming them.
BENCHMARKS := default_study compare_hyperfine bench_overhead bench_study_clock bench_vm bench_kernel bench_load \
	bench_forwarder bench_warm bench_vm_restore bench_storm bench_density
bench: setup
	@failed=""; for b in $(BENCHMARKS); do echo "== benchmarks/$$b.py"; \
	  $(BIN)/python benchmarks/$$b.py || failed="$$failed $$b"; done; \
	if [ -n "$$failed" ]; then echo "make bench: missed a target or failed:$$failed"; exit 1; fi

clean:
	rm -rf $(VENV) reports build site .cache/mkdocs-jupyter *.egg-info
