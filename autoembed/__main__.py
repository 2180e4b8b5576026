"""`python -m autoembed ...` is the `autoembed` command."""

import sys

from autoembed.cli import main

sys.exit(main())
