"""`python -m sel_otel`: the `sel-otel` command."""

import sys

from ._entry import main

sys.exit(main())
