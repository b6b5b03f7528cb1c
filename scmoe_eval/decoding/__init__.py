"""decoding stage of the pipeline."""
