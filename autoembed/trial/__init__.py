"""One trial: preflight (bad input refused before a run folder exists), run (seed, sandbox, agent, freeze, score),
its summary block and its ATIF trajectory. Below the loop and the experiments; it knows neither."""
