"""``python -m server.client``: the same as ``framehub-send``."""

from server.client.send import main

raise SystemExit(main())
