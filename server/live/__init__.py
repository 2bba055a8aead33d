"""Live ingest: session ids and connected sessions, each session's clip pipeline, the fan-out of
clips to the processors and the built-in analyses they may be."""
