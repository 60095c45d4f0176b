"""`python -m yoso_np ...`: the same command line as `yoso-np` (see yoso_np/cli.py)."""
import sys

from yoso_np.cli import main

sys.exit(main())
