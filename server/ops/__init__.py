"""Operations: where the process is in its life, what systemd is told, logs and metrics."""
