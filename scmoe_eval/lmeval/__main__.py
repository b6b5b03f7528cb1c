"""`python -m scmoe_eval.lmeval ARGS`: lm-eval's own CLI (`lm-eval ARGS`) with `--model scmoe` registered."""

import scmoe_eval.lmeval.backend  # noqa: F401  (registers the backend)
from lm_eval.__main__ import cli_evaluate

cli_evaluate()
