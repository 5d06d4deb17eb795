"""Finalize: return the image that passed everything, or else the one that passed the most criteria."""

from __future__ import annotations

from typing import Any

from gems.memory.state import GemsState
from gems.memory.trajectory import best_round


def finalize(state: GemsState) -> dict[str, Any]:
    """Pick the run's result.

    Args:
        state: `rounds`, `criteria`, `candidates`.

    Returns:
        `final` (round, image, passed and total counts) and `success`.
    """
    criteria = state.get("criteria") or []
    rounds = state.get("rounds") or []
    if not criteria:
        # Nothing to check: the single generation from the original prompt is the answer, unverified; not a success.
        image = (state.get("candidates") or [{}])[0]
        return {
            "final": {"round": state.get("round", 1), "image": image, "passed": 0, "total": 0},
            "success": None,
            "warnings": ["the decomposer found no criteria: one image from the request as written, not verified"],
        }
    # Verifier calls that failed count as fails; say so, so a run of errors does not pass for a hard prompt.
    errors = [v for v in state.get("verdicts") or [] if v.get("error") and not v.get("answer")]
    first = str(errors[0].get("error")) if errors else ""
    warnings = [f"{len(errors)} verifier calls failed (counted as fails): {first[:160]}"] if errors else []
    last = rounds[-1]
    chosen = last if not last.get("failed") else best_round(rounds)
    assert chosen is not None
    final = {
        "round": chosen["round"],
        "image": chosen.get("image"),
        "passed": len(chosen.get("passed") or []),
        "total": len(criteria),
    }
    update: dict[str, Any] = {"final": final, "success": not last.get("failed")}
    if warnings:
        update["warnings"] = warnings
    return update
