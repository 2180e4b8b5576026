"""autoembed: can an agent train a good embedding model on its own, and can a meta-agent make it better?"""

__version__ = "0.1.0"
