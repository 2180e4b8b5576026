"""Options several verbs share."""

from __future__ import annotations


def add_task_and_mode(parser, what: str = "sets") -> None:
    """--task, and --fast/--full (fast: the documented subsets, the default without a GPU)."""
    parser.add_argument("--task", default="embed", help="task name under tasks/ or a task folder (default: embed)")
    add_mode(parser, what)


def add_mode(parser, what: str = "sets") -> None:
    """--fast/--full alone (for a verb whose --task means something else)."""
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--fast", dest="fast", action="store_true", default=None,
                      help="the documented subset of each task (default without a GPU)")
    mode.add_argument("--full", dest="fast", action="store_false", help=f"the full {what} (default with a GPU)")
