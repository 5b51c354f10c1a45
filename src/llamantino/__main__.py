"""`python -m llamantino` is the same as the `llamantino` command (torchrun launches it so)."""

import sys

from llamantino.cli import main

sys.exit(main())
