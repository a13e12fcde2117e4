"""Deterministic simulator of whole clusters of the real core, and its checkers."""
