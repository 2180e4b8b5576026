"""autoembed: can an agent train a good embedding model on its own, and can a meta-agent make it better?"""

from autoembed.version import __version__  # noqa: F401
