"""`python -m arcdist.report`: the command line of arcdist.report."""
import sys

from arcdist.report.cli import main

sys.exit(main())
