"""Persistence and memory: artifacts, checkpointers, trajectory memory."""
