"""`python -m training ...` is `vigil-train ...` (what `torchrun -m training fit ...` runs)."""

import sys

from training.cli import main

sys.exit(main())
