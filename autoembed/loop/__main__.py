"""`python -m autoembed.loop ...` is `autoembed loop ...`."""

import sys

from autoembed.cli import main

sys.exit(main(["loop", *sys.argv[1:]]))
