"""``framehub-send``, the reference client (``python -m server.client``): it imports nothing of
the server but ``server.names``, so installing it does not pull the server's wiring in."""
