"""HTTP and Socket.IO handlers, one module per API: thin adapters that read the request, call
``live``, ``batch``, ``store`` or ``media`` and answer; errors are mapped in ``server.web``."""
