"""`python -m scmoe_eval [overrides...]`: the same Hydra app as the `scmoe-eval` script."""

from scmoe_eval.cli import main

if __name__ == "__main__":
    main()
