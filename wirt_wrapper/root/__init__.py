"""Runs as root: the pass, the monitor that answers user sides, libvirt, root's own records.

Trusts root-owned code and config only.  Never imports user-side code
(``tests/test_zones.py``).
"""
