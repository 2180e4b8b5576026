"""`autoembed seed DIR --hours H`: write the agent-facing files of a task into a new workdir."""

from __future__ import annotations

import json
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("seed", help="seed a workdir with the agent-facing files (task.py, instructions, timer, data)",
                       description="Write task.py, instructions.md, timer.sh and the dev + pool data into DIR "
                                   "(new or empty). The seed manifest goes harness-side, never into DIR.")
    p.add_argument("dir", help="the workdir to create")
    p.add_argument("--hours", type=float, required=True, help="the budget; the deadline is now + hours")
    p.add_argument("--task", default="embed", help="task name under tasks/ or a task folder (default: embed)")
    p.add_argument("--base-model", default=None, help="the path task.py gives as BASE_MODEL (default: the resolved base model)")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(func=_main)


def _main(args) -> int:
    from autoembed.task.seed import SeedError, manifest_path, seed_workdir

    try:
        manifest = seed_workdir(args.dir, args.hours, args.task, base_model=args.base_model)
    except SeedError as exc:
        print(f"autoembed seed: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(manifest, indent=2))
    else:
        print(f"seeded {manifest['workdir']}: {len(manifest['files'])} files, deadline {manifest['deadline_utc']}")
        print(f"manifest: {manifest_path(args.dir)}")
    return 0
