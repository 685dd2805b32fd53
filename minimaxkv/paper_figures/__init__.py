"""Paper figures: one script per figure, each loading one cached result (no JAX compute)."""
