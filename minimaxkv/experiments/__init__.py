"""Experiments: one module per experiment, each computing one cached result (see common.py)."""
