"""The meta-loop: a meta-agent edits one file, trials measure it, the gate keeps or reverts it, the ledger records it.

    python -m autoembed.loop --hours 24        # the same as `autoembed loop`

engine (the Loop and run_loop: planning, running and recording composed, each its own module; jobs and spend hold
what they and the report share), config (the typed LoopConfig), gate (the statistics of keep or revert), ledger (one
row a trial), smoke (a candidate's quick check before a trial), report (the loop's summary and plot), meta (the
meta-agents and the repository they edit). Below the experiments; above trials, which it runs through placement.
"""
