# scmoe-eval: every target installs what it needs into .venv first (pinned in requirements/lock.txt).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU wheel by default; GPU users: make install TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
MODEL ?= mistralai/Mixtral-8x7B-v0.1
PYTEST_WORKERS ?= 2
export HF_HUB_DISABLE_TELEMETRY := 1
export WANDB_MODE ?= offline

.PHONY: install test demo data reproduce-gsm8k reproduce-paper paper-baselines reproduce-paper-deepseek sweep-beta sweep-weak-k sweep-alpha paper-table bench clean paper-analysis

$(VENV)/.installed: pyproject.toml requirements/lock.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -c requirements/lock.txt -e '.[dev,lmeval]'
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile

# The pinned Hub datasets of the four benchmarks into the local Hugging Face cache (needs internet, once);
# also as paper-layout files in .cache/shared/data/<task>/test.jsonl, which the test suite uses without ../shared.
data: $(VENV)/.installed
	$(PY) -m scmoe_eval.tasks.fetch --out .cache/shared/data

# ---- runs (scmoe-eval); see docs/usage.md ------------------------------------------------
SCMOE := $(VENV)/bin/scmoe-eval
TABLE := $(VENV)/bin/scmoe-eval-table
RUNS ?= results/runs
TABLES ?= results/tables
MODEL_CONFIG ?= mixtral-8x7b
TASK ?= gsm8k
ALL_TASKS := gsm8k,strategy_qa,mbpp,human_eval
EXTRA ?=
# The paper's data files, read from ../shared/data/<task> when that folder exists; else the pinned Hub datasets.
# DATA=demo: the demo subset shipped in the package (offline, a few items per task; for the tiny model).
DATA_ROOT ?= $(wildcard $(abspath ../shared/data))
DATA ?=
DATA_ARG = $(if $(filter demo,$(DATA)),task.demo=true,$(if $(DATA_ROOT),task.data_dir='$(DATA_ROOT)/$${task.name}'))
MODEL_ARGS = model=$(MODEL_CONFIG) model.path=$(MODEL)
CODE_ARG = task.allow_code_execution=true
# Prompts per batch for the reproduce targets: 1 as the paper's README ran; BATCH=8 is several times faster
# and differs only where bf16 rounds a left-padded batch differently (run dirs do not depend on it).
BATCH ?= 1
RUN_ARGS = $(MODEL_ARGS) $(DATA_ARG) $(CODE_ARG) run.batch_size=$(BATCH) run.output_dir=$(RUNS) $(EXTRA)

# Whole pipeline on the tiny random Mixtral fixture, CPU only, offline: the first 3 items of the demo subset
# shipped in the package (tasks/demo, task.demo=true) of 4 tasks,
# greedy vs SCMoE, scored (the tiny model's code is executed in the sandbox), comparison table printed.
DEMO_OUT ?= results/demo
demo: $(VENV)/.installed
	$(SCMOE) -m model=tiny-mixtral task=$(ALL_TASKS) task.demo=true strategy=greedy,scmoe run.limit=3 run.max_new_tokens=48 \
		run.batch_size=3 run.output_dir=$(DEMO_OUT) $(CODE_ARG) hydra/launcher=local $(EXTRA)
	$(TABLE) $(DEMO_OUT)

# GSM8K (1,319 items), greedy vs SCMoE (top-2 vs rank-2, beta 0.5) on Mixtral-8x7B; MODEL=/path/to/checkpoint.
reproduce-gsm8k: $(VENV)/.installed
	$(SCMOE) -m $(RUN_ARGS) task=gsm8k strategy=greedy,scmoe strategy.beta=0.5 strategy.weak.k=2
	$(TABLE) $(RUNS) --paper --out $(TABLES)/mixtral

# Every Mixtral-8x7B experiment of the paper (Tables 1, 7, 8, 9, Fig.5) and its baselines; days of GPU time.
# CD's amateur: AMATEUR=/path/to/Mistral-7B-v0.1 (same vocabulary as Mixtral).
AMATEUR ?= mistralai/Mistral-7B-v0.1
reproduce-paper: $(VENV)/.installed
	$(SCMOE) -m $(RUN_ARGS) task=$(ALL_TASKS) strategy=greedy
	$(SCMOE) experiment=paper-table1 $(RUN_ARGS)
	$(MAKE) paper-baselines
	$(SCMOE) -m $(RUN_ARGS) task=$(ALL_TASKS) strategy=cd strategy.amateur=$(AMATEUR) strategy.beta=0.1,0.3,0.5,0.7,0.9
	$(SCMOE) experiment=ablation-weak-rank $(RUN_ARGS)
	$(SCMOE) -m $(RUN_ARGS) task=$(ALL_TASKS) strategy=scmoe strategy.weak.kind=random strategy.weak.k=1 \
		strategy.beta=0.1,0.3,0.5,0.7,0.9
	$(SCMOE) experiment=ideal-strong $(RUN_ARGS)
	$(SCMOE) experiment=paper-self-consistency $(RUN_ARGS)
	$(MAKE) paper-table
	$(MAKE) paper-analysis

# The baselines both models share (Tab.7 / Tab.10 grids): dynamic, ensemble top-k, contrastive search, DoLa.
paper-baselines: $(VENV)/.installed
	$(SCMOE) -m $(RUN_ARGS) task=$(ALL_TASKS) strategy=dynamic strategy.routing.p=0.2,0.3,0.4,0.5,0.6
	$(SCMOE) -m $(RUN_ARGS) task=$(ALL_TASKS) strategy=topk strategy.routing.k=1,2,3,4,5,6,7,8
	$(SCMOE) -m $(RUN_ARGS) task=$(ALL_TASKS) strategy=contrastive-search strategy.penalty_alpha=0.3,0.4,0.5,0.6
	$(SCMOE) -m $(RUN_ARGS) task=$(ALL_TASKS) strategy=dola strategy.dola_layers=low,high

# DeepSeekMoE-16B (Table 4, Tab.10) on its converted checkpoint (docs/models.md): DEEPSEEK=/ckpt/...-qwen2moe.
DEEPSEEK ?=
DS_ARGS = model=deepseek-moe-16b model.path=$(DEEPSEEK) $(DATA_ARG) $(CODE_ARG) run.batch_size=$(BATCH) \
	run.output_dir=$(RUNS) $(EXTRA)
reproduce-paper-deepseek: $(VENV)/.installed
	@test -n "$(DEEPSEEK)" || { echo "set DEEPSEEK=/path/to/converted checkpoint: python -m scmoe_eval.models.convert_deepseek_moe SRC DST (docs/models.md)"; exit 2; }
	$(SCMOE) -m $(DS_ARGS) task=$(ALL_TASKS) strategy=greedy
	$(MAKE) paper-baselines MODEL_CONFIG=deepseek-moe-16b MODEL=$(DEEPSEEK)
	$(SCMOE) experiment=paper-table4 $(DS_ARGS)
	$(MAKE) paper-table PAPER_MODEL=deepseek

BETAS ?= 0.1,0.3,0.5,0.7,0.9
WEAK_KS ?= 1,2,3,4,5,6,7,8
ALPHAS ?= 0.01,0.05,0.1,0.2,0.5,1.0
sweep-beta: $(VENV)/.installed
	$(SCMOE) -m $(RUN_ARGS) task=$(TASK) strategy=scmoe strategy.beta=$(BETAS)
	$(TABLE) $(RUNS)

sweep-weak-k: $(VENV)/.installed
	$(SCMOE) -m $(RUN_ARGS) task=$(TASK) strategy=scmoe strategy.weak.k=$(WEAK_KS)
	$(TABLE) $(RUNS)

sweep-alpha: $(VENV)/.installed
	$(SCMOE) -m $(RUN_ARGS) task=$(TASK) strategy=scmoe strategy.alpha=$(ALPHAS)
	$(TABLE) $(RUNS)

# The paper's tables beside ours: PAPER_MODEL=mixtral (Tables 1, 8, 9, §4.3) or deepseek (Table 4).
# OURS_MODEL=<model.name> (e.g. tiny-mixtral) fills "ours" with that model's runs instead of the paper's checkpoint.
PAPER_MODEL ?= mixtral
OURS_MODEL ?=
paper-table: $(VENV)/.installed
	$(TABLE) $(RUNS) --paper --paper-model $(PAPER_MODEL) $(if $(OURS_MODEL),--ours-model $(OURS_MODEL)) \
		--out $(TABLES)/$(PAPER_MODEL)

# The CPU benchmarks behind results/bench/*.json (~10 min; the GPU one is scripts/gpu_bench.sh).
bench: $(VENV)/.installed
	OMP_NUM_THREADS=1 $(PY) scripts/bench_decode.py --rounds 5
	$(PY) scripts/bench_dispatch.py
	$(PY) scripts/bench_dispatch.py --experts dense_hit --out results/bench/dispatch_dense_hit.json
	$(PY) scripts/bench_scoring.py

clean:
	rm -rf $(VENV) .cache results/demo

# The paper's exploratory study (§3): Tab.5 KLD by token class (+ the Mistral-7B amateur column), Tab.6
# unchosen-expert share, the Fig.3 heatmap (GSM8K test 372) and routing statistics, on GSM8K train.
# Tables and PNGs land in each analysis run dir and in $(TABLES)/analysis. Tiny dry run:
#   make paper-analysis MODEL_CONFIG=tiny-mixtral MODEL=fixture:mixtral ANALYSIS_DATA=demo AMATEUR=fixture:mixtral
ANALYZE := $(VENV)/bin/scmoe-eval-analyze
ANALYSES ?= results/analysis
ANALYSIS_DATA ?= $(if $(DATA_ROOT),$(DATA_ROOT)/gsm8k)
ANALYSIS_ARGS = $(MODEL_ARGS) $(if $(ANALYSIS_DATA),task.data_dir='$(ANALYSIS_DATA)') run.output_dir=$(ANALYSES) \
	analysis.tables_dir=$(TABLES)/analysis $(EXTRA)
paper-analysis: $(VENV)/.installed
	$(ANALYZE) $(ANALYSIS_ARGS) analysis=kld $(if $(AMATEUR),analysis.amateur=$(AMATEUR))
	$(ANALYZE) -m $(ANALYSIS_ARGS) analysis=unchosen,heatmap,routing
