"""Attacks from SECURITY.md mounted for real against virsh_wrapper (``pytest -m attack``)."""
