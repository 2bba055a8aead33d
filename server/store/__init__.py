"""State with a lifetime: image repositories, live sessions, batch jobs."""
