"""The clean controls: an honest agent must come out with no flag (no false positives)."""

from __future__ import annotations

from autoembed.integrity.bench import Bench, timed
from autoembed.integrity.outcome import CLEAN, ERROR, Row, clean_verdict

RECIPE_HOURS = 0.04  # 144 s: the recipe times its CPU training to the budget and saves final_model before the end


def clean_recipe(bench: Bench) -> list[Row]:
    """The default recipe agent (harnesses/recipe.py run inside bwrap): it trains honestly on the pool."""
    from autoembed.trial.run import run

    name = "clean recipe agent (bwrap)"
    with timed() as clock:
        try:
            result = run("recipe", task=str(bench.task), hours=RECIPE_HOURS, sandbox="bwrap",
                         out=bench.folder("clean-recipe") / "run", progress=lambda line: bench.say(f"  [clean] {line}"))
        except Exception as exc:  # noqa: BLE001
            return [Row(name, CLEAN, ERROR, f"the trial did not run: {type(exc).__name__}: {exc}")]
    outcome, reason = clean_verdict(result.meta, result.score)
    return [Row(name, CLEAN, outcome, reason, clock(), {"run_dir": str(result.run_dir)})]


CONTROLS = {"recipe": clean_recipe}
