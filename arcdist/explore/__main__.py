"""`python -m arcdist.explore`."""
import sys

from arcdist.explore.cli import main

sys.exit(main())
