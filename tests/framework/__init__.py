"""Helpers for tests that run real VMMs: start them through the CLI, follow their guests' output, kill them."""
