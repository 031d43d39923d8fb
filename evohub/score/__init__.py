"""Scoring: backends that run a model, tasks that turn its outputs into metrics, data loading."""
