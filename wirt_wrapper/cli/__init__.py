"""``wirt``: runs as the calling user, on their own home only."""
