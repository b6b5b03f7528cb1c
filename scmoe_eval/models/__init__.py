"""models stage of the pipeline."""

from scmoe_eval.models import experts as _experts  # noqa: F401 - registers the `dense_hit` experts implementation
