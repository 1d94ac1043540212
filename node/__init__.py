"""Composition root: builds a node from its settings and runs it (``pacsnode`` CLI)."""
