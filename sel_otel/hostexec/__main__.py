"""`python -m sel_otel.hostexec`: run the host-exec service."""

from __future__ import annotations

from ._service import main

raise SystemExit(main())
