"""Run one trial on the machine this code runs on, and say how it went in a small JSON-able outcome.

The one entry point every place uses: in this process for a local place, in a child process whose DOCKER_HOST
names the engine for a Docker place (`python -m autoembed.placement.worker request.json outcome.json`), and
inside the Slurm job for a Slurm place (submitit runs the function there).
"""

from __future__ import annotations

import json
import socket
import sys
import traceback
from pathlib import Path


def run_trial_here(run_kwargs: dict, gpu: str | None = None) -> dict:
    """{"run_dir", "clean", "error", "bad_input", "host", "exit_reason"}: error is set when no agent ran (the place
    could not start the trial), bad_input when the arguments were refused before a run folder existed."""
    from autoembed.trial.preflight import PreflightError
    from autoembed.trial.run import TrialFailedToStart, run

    kwargs = dict(run_kwargs)
    if gpu is not None:
        kwargs["gpus"] = [gpu]
    outcome = {"run_dir": str(kwargs["out"]) if kwargs.get("out") else None, "clean": False, "error": None,
               "bad_input": False, "host": socket.gethostname()}
    try:
        result = run(**kwargs)
    except TrialFailedToStart as exc:
        outcome.update(error=str(exc), run_dir=str(exc.run_dir))
    except (PreflightError, ValueError, TypeError) as exc:  # the arguments, not the place
        outcome.update(error=f"{type(exc).__name__}: {exc}", bad_input=True)
    except Exception:  # noqa: BLE001 - anything else stopped the trial here: the place's failure, retried elsewhere
        outcome.update(error=traceback.format_exc(limit=8))
    else:
        outcome.update(run_dir=str(result.run_dir), clean=result.exit_code == 0,
                       exit_reason=result.exit_reason)
    return outcome


def main(argv: list[str] | None = None) -> int:
    request, outcome_path = (argv if argv is not None else sys.argv[1:])
    spec = json.loads(Path(request).read_text())
    outcome = run_trial_here(spec["run_kwargs"], spec.get("gpu"))
    Path(outcome_path).write_text(json.dumps(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main())
