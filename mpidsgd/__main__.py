"""`python -m mpidsgd` is `python -m mpidsgd.train`."""
import sys

from .train import main

sys.exit(main())
