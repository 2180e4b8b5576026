"""Templates of the files `autoembed seed` writes into a workdir (task.py, timer.sh).

Placeholders are quoted "__NAME__" strings, so task.py stays valid Python here; autoembed.task.seed
replaces each with the value's repr.
"""
