"""Runs as the user (dropped for good; the prober: the user's filesystem identity).

Distrusts everything in the home it serves; reaches it only through :mod:`.fs`.
"""
