"""wirt: let members of a Unix group control their own libvirt VMs through files.

The package is split by trust zone; the file list shows the boundary:

* :mod:`rootside` - the privileged pass (root); :mod:`hypervisor` - libvirt (root);
  :mod:`audit` - root-only records; :mod:`config` - the admin's config;
* :mod:`privsep` - the boundary: fork, drop to the user for good, the channel;
* :mod:`userside` and :mod:`userfs` - everything that touches a home (the user);
* :mod:`actions`, :mod:`layouts`, :mod:`status` - pure rules shared by both sides;
* :mod:`migrate` - ``wirt-migrate-legacy``, run by a user on their own home;
* :mod:`cli` and :mod:`spool` - the ``wirt`` command (the calling user, own home only);
  :mod:`admin` - its root-only verbs.
"""

__version__ = "0.1.0"
