"""framehub entry point: ``python main.py --config settings.toml [--host H] [--port P]``."""

from server.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
