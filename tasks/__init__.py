"""Task adapters (installed as scmoe_eval.tasks)."""
