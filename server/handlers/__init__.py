"""HTTP and Socket.IO handlers: thin adapters between requests and ``server.store``/``server.media``."""
