"""Image repositories served as virtual cameras: listing and serving, their downloads, archive
checks and the frame cache."""
