"""`python -m arcdist SUBCOMMAND ...`, the same as the `arcdist` command."""
from arcdist import errors
from arcdist.command import main

errors.end_process(main())
