"""Where an agent runs: bwrap, docker, none. See base.Sandbox for the interface."""
