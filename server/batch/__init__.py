"""Batch analysis of whole videos: uploads spooled to disk, the job record kept on disk, and the
queue that runs jobs a few at a time."""
