"""`gems skills evolve`: propose changes to the skill library from run lessons; keep those held-out prompts confirm."""

from gems.interfaces.evolve.runner import EvolveOptions, apply_library, evolve

__all__ = ["EvolveOptions", "apply_library", "evolve"]
