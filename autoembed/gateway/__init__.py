"""The LLM gateway (server.py) and the wire formats it reads (wire.py, sse.py); the forwarder that reaches it
from inside a sandbox is sandbox plumbing (autoembed/sandbox/forwarder.py)."""
