"""SCMoE as an lm-evaluation-harness model backend (`--model scmoe`; needs the `.[lmeval]` extra).

Importing `scmoe_eval.lmeval.backend` registers the backend with lm-eval; `scmoe-eval-lmeval`
(scmoe_eval/lmeval/cli.py) runs lm-eval with it and files each task as an ordinary run directory.
lm-eval 0.4.13 discovers no external models (no entry-point group is scanned), so the import is
what makes `simple_evaluate(model="scmoe", ...)` work.
"""
