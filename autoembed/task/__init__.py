"""The frozen measurement the agent may see: task spec, data loading, metrics, evaluator, agent files.

Nothing in this package imports autoembed.sealed.
"""
