"""python -m nasops.train: see nasops.train."""
import sys

from .loop import main

sys.exit(main())
