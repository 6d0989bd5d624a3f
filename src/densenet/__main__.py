"""``python -m densenet`` (and ``torchrun -m densenet``) runs the command line."""

import sys

from densenet.cli import main

sys.exit(main())
