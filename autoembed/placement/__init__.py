"""Where trials run: this machine's GPUs, a list of Docker engines, or Slurm (through submitit).

A Place (name, kind local | docker | slurm, its GPU slots) runs one trial from autoembed.trial.run.run() keyword
arguments and returns its folder; run_pool / Pool run many trials over many places, one per slot, and retry a
trial elsewhere when its place fails. Each trial's meta.json records meta["placement"]. Places can also be
written in a TOML file (autoembed.placement.config).

This package imports none of its modules, so that they import each other one way (place <- docker_engine, slurm,
pool <- config):

    from autoembed.placement.place import KINDS, BadTrial, LocalPlace, Place, PlaceFailed
    from autoembed.placement.docker_engine import DockerPlace
    from autoembed.placement.slurm import SlurmPlace
    from autoembed.placement.pool import NoPlaceLeft, Pool, run_pool, trial_result
"""
