"""`python -m falconlm` (and `torchrun -m falconlm`) runs the CLI."""

import sys

from falconlm.cli import main

sys.exit(main())
