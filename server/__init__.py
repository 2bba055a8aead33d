"""framehub: one aiohttp process that ingests camera frames, runs batch videos through analysis
APIs and serves folders of images as virtual cameras."""
