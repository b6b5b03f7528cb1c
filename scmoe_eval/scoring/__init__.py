"""scoring stage of the pipeline."""
