"""The privilege boundary: root's helpers forked before libvirt, the drop, the wire format."""
