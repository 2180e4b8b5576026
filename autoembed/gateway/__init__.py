"""The LLM gateway (server.py) and the forwarder that reaches it from inside a sandbox (forwarder.py)."""
