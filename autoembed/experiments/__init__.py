"""What people run and read on top of trials and loops: comparisons of meta x task model pairs (config, compare, report),
the notebook API (notebook, results) and tidy frames of any folder of results (frames)."""
