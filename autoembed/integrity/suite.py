"""The whole audit: every case group in order, one table, one exit code.

Groups: bad input (fresh CLI processes), the escape program on each engine, the dishonest submissions, the
injected faults, the clean controls, and two real loops: one killed mid-score and resumed (a fault and a clean
control), one whose LLM meta-agent is scripted through the chaos upstream (API errors, its attacks, a kill
mid-commit, --max-cost). A group that raises is an AUDIT ERROR row, never a silent pass.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from autoembed.integrity.bench import Bench
from autoembed.integrity.outcome import ATTACK, ERROR, Row, exit_code, table, tally

GROUPS = ("bad-input", "escape", "cheats", "faults", "clean", "loop")


def engines() -> tuple[list[str], list[Row]]:
    """The engines to attack (bwrap and docker); an engine that is missing is an audit error, never skipped."""
    from autoembed.sandbox.bwrap import bwrap_problem
    from autoembed.sandbox.factory import docker_problem

    found, rows = [], []
    for name, problem in (("bwrap", bwrap_problem()), ("docker", docker_problem())):
        if problem:
            rows.append(Row(f"sandbox engine {name}", ATTACK, ERROR, f"cannot audit {name}: {problem}"))
        else:
            found.append(name)
    return found, rows


def plan(bench: Bench, groups: tuple[str, ...], only: str | None) -> list[tuple[str, Callable[[], list[Row]]]]:
    """(label, thunk) per unit of work, in order; `only` keeps the units whose label holds that text."""
    from autoembed.integrity import (bad_input, cheats, clean, escape, faults, grid_case, host_bounds, loop_case,
                                     meta_loop_case)

    units: list[tuple[str, Callable[[], list[Row]]]] = []
    if "bad-input" in groups:
        units.append(("bad input", lambda: bad_input.run_bad_input(bench)))
    if "escape" in groups:
        kinds, missing = engines()
        if missing:
            units.append(("engines", lambda: missing))
        for kind in kinds:
            units.append((f"escape {kind}", lambda kind=kind: escape.run_escape(bench, kind)))
    if "cheats" in groups:
        for cheat in cheats.CHEATS:
            units.append((f"cheat {cheat.name}", lambda cheat=cheat: cheats.run_cheat(bench, cheat)))
        from autoembed.integrity import gateway_case

        units.append(("cheat the gateway: forbidden paths, an unpriced model, concurrent calls past the cap",
                      lambda: gateway_case.gateway_attacks(bench)))
        units.append(("cheat host bounds: sparse 1 TiB final_model, stderr flood, giant line, terminal control sequences",
                      lambda: host_bounds.host_bounds(bench)))
    if "faults" in groups:
        for name, fault in faults.FAULTS.items():
            units.append((f"fault {name}", lambda fault=fault: fault(bench)))
    if "clean" in groups:
        for name, control in clean.CONTROLS.items():
            units.append((f"clean {name}", lambda control=control: control(bench)))
    if "loop" in groups:
        units.append(("loop killed mid-score, resumed; clean loop", lambda: loop_case.loop_killed_mid_score(bench)))
        units.append(("meta-agent loop: API errors, attacks, killed mid-commit, --max-cost",
                      lambda: meta_loop_case.meta_loop(bench)))
        units.append(("meta-agent loop wedges: a poison candidate pending at --resume, a catastrophic regex, a 400 KB "
                      "edit, a second loop on the folder", lambda: meta_loop_case.wedge_loop(bench)))
        units.append(("grid: a Docker engine lost mid-grid", lambda: grid_case.engine_lost_mid_grid(bench)))
    return [(label, thunk) for label, thunk in units if not only or only in label]


def run_suite(root: Path, *, groups: tuple[str, ...] = GROUPS, only: str | None = None, say=print,
              keep: bool = False) -> tuple[list[Row], dict]:
    """Run the audit in root (a scratch folder; its cases are removed at the end unless keep or a case failed);
    returns (rows, the audit record that audit.json holds)."""
    started = time.perf_counter()
    bench = Bench(root, say=say)
    rows: list[Row] = []
    for label, thunk in plan(bench, groups, only):
        say(f"[audit] {label}")
        t0 = time.perf_counter()
        try:
            new = thunk()
        except Exception as exc:  # noqa: BLE001 - a unit that breaks is a failing row, with its traceback kept
            new = [Row(label, ATTACK, ERROR, f"{type(exc).__name__}: {exc}", time.perf_counter() - t0,
                       {"traceback": traceback.format_exc()})]
        for row in new:
            say(f"[audit]   {row.outcome:12} {row.case}: {row.reason[:160]}")
        rows.extend(new)
    record = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
              "seconds": round(time.perf_counter() - started, 1), "tally": tally(rows), "exit_code": exit_code(rows),
              "rows": [vars(r) | {"ok": r.ok} for r in rows]}
    (root / "audit.json").write_text(json.dumps(record, indent=2, default=str))
    (root / "audit.md").write_text(table(rows) + "\n\n" + record["tally"] + "\n")
    if not keep and exit_code(rows) == 0:
        shutil.rmtree(bench.cases, ignore_errors=True)
    return rows, record


def machine() -> str:
    import os

    return f"{platform.node()}: {os.cpu_count()} CPUs, {platform.platform(terse=True)}, Python {platform.python_version()}"
