"""Audits of a finished workdir that need no cooperation from the agent: contamination, lineage, tampering."""
