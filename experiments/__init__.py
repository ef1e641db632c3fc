"""Declarative claim specs and the runner that turns them into MLflow runs."""
