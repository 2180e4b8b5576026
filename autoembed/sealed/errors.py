"""The scorer's own failure, importable without torch (the command line reports it as one line)."""


class ScorerError(RuntimeError):
    """The harness itself cannot score (its data or base model is missing or altered): not the agent's fault."""
