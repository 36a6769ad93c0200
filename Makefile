# kvsched front door: thin targets over hack/ scripts.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: help install demo test e2e lint typecheck check bench controlplane podresources \
	gpuallocator kwok lws helm testbins cluster-up cluster-down demo-cluster clean

help: ## list targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

install: $(BIN)/kvsched ## create .venv and install kvsched with its dev tools

$(BIN)/kvsched: pyproject.toml
	PYTHON=$(PYTHON) VENV=$(VENV) hack/install.sh

demo: install ## run the extender on the example cluster and schedule example pods through it
	$(BIN)/kvsched demo

test: install ## whole suite; with Go it first builds what e2e needs (testbins), without Go it says e2e did not run
	VENV=$(VENV) hack/test.sh

.PHONY: unit
unit: install ## the quick loop: unit and API tests, no e2e, no Go builds
	KVSCHED_TEST_MODE=unit VENV=$(VENV) hack/test.sh

e2e: install ## only the e2e tests (real etcd, kube-apiserver, kube-scheduler)
	KVSCHED_E2E=1 VENV=$(VENV) hack/test.sh -m e2e

controlplane: ## build etcd, kube-apiserver, kube-scheduler, kube-controller-manager, kubectl (cached)
	hack/controlplane/build.sh

podresources: ## build the kubelet's PodResources test server (cached in ~/.cache/kvsched)
	hack/podresources/build.sh

gpuallocator: ## build the go-gpuallocator oracle (the device plugin's GPU choice; cached)
	hack/gpuallocator/build.sh

kwok: ## build KWOK, the fake kubelet of the real-controller e2e tests (cached in ~/.cache/kvsched)
	hack/kwok/build.sh

lws: ## build the LeaderWorkerSet controller + its CRDs/webhook manifests (cached in ~/.cache/kvsched)
	hack/lws/build.sh

helm: ## build helm (helm.sh/helm/v4) for the chart's tests (cached in ~/.cache/kvsched)
	hack/helm/build.sh

testbins: controlplane podresources gpuallocator kwok lws helm ## every Go-built binary the tests use

cluster-up: controlplane ## start a local control plane; prints its kubeconfig path
	hack/controlplane/up.sh

cluster-down: ## stop the local control plane
	hack/controlplane/down.sh

demo-cluster: install controlplane ## the demo on a local control plane with the real kube-scheduler
	$(BIN)/python hack/demo_cluster.py

lint: install ## ruff lint and format check
	$(BIN)/ruff check scheduler topology tests hack
	$(BIN)/ruff format --check scheduler topology tests hack

typecheck: install ## mypy --strict on the packages
	$(BIN)/mypy

check: lint typecheck test ## everything CI runs

# Not tied to install: the image build needs only root, python3 with pip, mmdebstrap and umoci.
.PHONY: image image-check
image: ## build the OCI image (Debian bookworm + kvsched[agent]) -> build/kvsched-<version>.oci.tar, then check it
	PYTHON=$(PYTHON) hack/image/build.sh

image-check: ## run kvsched --version / extender --help inside the built image as uid 65532
	PYTHON=$(PYTHON) hack/image/check.sh

bench: install ## extender latency benchmark -> docs/benchmarks.md
	VENV=$(VENV) hack/bench.sh

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
