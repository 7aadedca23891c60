"""`python -m launch ...` works wherever the `rlhf-dist` console script is missing."""

import sys

from launch.cli.main import main

sys.exit(main())
