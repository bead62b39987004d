"""``python -m relayq``: the same as the ``relayq`` command."""

from relayq.cli import main

raise SystemExit(main())
