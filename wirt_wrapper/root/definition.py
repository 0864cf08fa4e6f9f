"""A domain's settings in its libvirt XML: read them, and write a new definition (SPEC 9).

Pure functions on domain XML (lxml; no libvirt calls), used by
:meth:`wirt_wrapper.root.hypervisor.Hypervisor.configure`:

* :func:`read_settings`: memory, vCPUs, boot order and CD of a definition,
  shaped like the ``wanted`` dict of :func:`wirt_wrapper.rules.settings.parse`;
* :func:`apply_settings`: the new persistent definition, changing only the
  keys *wanted* names;
* :func:`cdrom_device_xml`: the CD-ROM ``<disk>`` with a new medium, for a
  live ``updateDeviceFlags``.

The CD's file is always the *iso_path* argument (root's own path for a
catalogue entry), never built from the user's ``cdrom`` name.
"""

from __future__ import annotations

import os
from typing import Any

from lxml import etree

from wirt_wrapper.rules.settings import ISO_NAME

__all__ = ["NOT_CATALOGUE", "PER_DEVICE_BOOT", "apply_settings", "cdrom_device_xml",
           "read_settings", "settings_from_tree"]

# The CD shown when the drive holds a file that is not directly in the catalogue.
NOT_CATALOGUE = "(not from the catalogue)"
PER_DEVICE_BOOT = ("boot: the admin set a per-device boot order in this VM's definition "
                   "(<boot order=...> on its disks or interfaces), and libvirt does not allow "
                   "a boot list together with it; ask the admin to change the boot order")

# libvirt's memory units (docs: formatdomain, "Memory Allocation"), in bytes.
_UNITS = {
    "b": 1, "bytes": 1,
    "kb": 10**3, "k": 2**10, "kib": 2**10,
    "mb": 10**6, "m": 2**20, "mib": 2**20,
    "gb": 10**9, "g": 2**30, "gib": 2**30,
    "tb": 10**12, "t": 2**40, "tib": 2**40,
    "pb": 10**15, "p": 2**50, "pib": 2**50,
    "eb": 10**18, "e": 2**60, "eib": 2**60,
}
# Children of <os> that come before <boot> in libvirt's schema.
_BEFORE_BOOT = ("type", "firmware", "loader", "nvram", "kernel", "initrd", "cmdline", "shim",
                "dtb", "acpi")
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, remove_blank_text=False)


def _parse(xml: str) -> Any:
    return etree.fromstring(xml.encode(), _PARSER)


def _kib(node: Any) -> int:
    """The size in *node* (``<memory unit=...>``), in KiB (rounded down); 0 if absent."""
    if node is None or not (node.text or "").strip():
        return 0
    unit = (node.get("unit") or "KiB").lower()
    if unit not in _UNITS:
        raise ValueError(f"unknown memory unit {node.get('unit')!r}")
    return int(node.text.strip()) * _UNITS[unit] // 1024


def _cdrom(root: Any) -> Any:
    """The first CD-ROM drive (``<disk device='cdrom'>``), or None."""
    return root.find("devices/disk[@device='cdrom']")


def _cdrom_file(disk: Any) -> str | None:
    """The CD's file; "" when the drive is empty; None for a medium that is not a file."""
    source = disk.find("source")
    if source is None or not source.attrib:
        return ""
    file: str | None = source.get("file")
    if file is None:
        return None if (source.get("dev") or source.get("protocol")
                        or source.get("volume") or source.get("name")) else ""
    return file


def _cdrom_name(file: str | None, iso_dir: str) -> str:
    if file == "":
        return ""
    if file is None or not iso_dir:
        return NOT_CATALOGUE
    folder, name = os.path.split(os.path.normpath(file))
    if folder != os.path.normpath(iso_dir) or not ISO_NAME.fullmatch(name):
        return NOT_CATALOGUE
    return name


def settings_from_tree(root: Any, iso_dir: str) -> dict[str, Any]:
    """:func:`read_settings` of an already parsed ``<domain>`` element (not changed).

    One walk over the children, not one ``find`` per key: this runs for every
    domain on the idle path (from the bulk XML read).
    """
    memory = vcpu = os_node = disk = None
    for child in root:
        tag = child.tag
        if tag == "memory":
            memory = child
        elif tag == "vcpu":
            vcpu = child.text
        elif tag == "os":
            os_node = child
        elif tag == "devices" and disk is None:
            disk = next((d for d in child if d.tag == "disk" and d.get("device") == "cdrom"),
                        None)
    target = disk.find("target") if disk is not None else None
    file = _cdrom_file(disk) if disk is not None else ""
    return {
        "memory_mib": _kib(memory) // 1024,
        "vcpus": int(vcpu.strip()) if vcpu and vcpu.strip() else 0,
        "boot": ([b.get("dev", "") for b in os_node if b.tag == "boot"]
                 if os_node is not None else []),
        "cdrom": _cdrom_name(file, iso_dir),
        "has_cdrom": disk is not None,
        # internal (for Hypervisor.configure), not for status:
        "cdrom_file": file,
        "cdrom_target": ({"dev": target.get("dev", ""), "bus": target.get("bus", "")}
                         if target is not None else {}),
    }


def read_settings(xml: str, iso_dir: str) -> dict[str, Any]:
    """The settings a domain definition holds.

    Keys: ``memory_mib`` (int, from ``<memory>``, any unit), ``vcpus`` (int,
    ``<vcpu>``'s text: the maximum), ``boot`` (list of ``<os><boot dev>``;
    [] if none), ``cdrom`` (of the first CD-ROM drive: the file's name when it
    lies directly in *iso_dir* and is named like a catalogue entry, "" when the
    drive is empty, :data:`NOT_CATALOGUE` for anything else; "" with no drive),
    ``has_cdrom`` (bool); and for the live update ``cdrom_file`` (the file's
    path, "" when empty, None for a medium that is not a file) and
    ``cdrom_target`` ({"dev", "bus"} of the drive, {} without one).
    """
    return settings_from_tree(_parse(xml), iso_dir)


def _set_source(disk: Any, iso_path: str | None) -> None:
    """Give *disk* the medium *iso_path* (None: no medium)."""
    old = disk.find("source")
    if iso_path is None:
        if old is not None:
            _remove(old)
        return
    disk.set("type", "file")
    new = etree.Element("source", file=iso_path)
    if old is not None:
        if old.get("startupPolicy"):
            new.set("startupPolicy", str(old.get("startupPolicy")))
        new.tail = old.tail
        old.getparent().replace(old, new)
        return
    driver = disk.find("driver")
    if driver is None:
        new.tail = disk.text
        disk.insert(0, new)
    else:
        new.tail = driver.tail
        driver.addnext(new)


def _remove(node: Any) -> None:
    """Remove *node*, keeping the text layout of what follows it."""
    parent = node.getparent()
    previous = node.getprevious()
    if node.tail is not None:
        if previous is not None:
            previous.tail = node.tail
        else:
            parent.text = node.tail
    parent.remove(node)


def _element_after(parent: Any, tag: str, after: tuple[str, ...], text: str) -> Any:
    """A new child *tag* of *parent*, placed after its last child named in *after*."""
    node = etree.Element(tag)
    node.text = text
    last = None
    for child in parent:
        if child.tag in after:
            last = child
    indent = last.tail if last is not None else parent.text
    if last is None:
        parent.insert(0, node)
    else:
        last.addnext(node)
    node.tail = indent
    return node


def _set_memory(root: Any, kib: int) -> None:
    for tag in ("memory", "currentMemory"):
        node = root.find(tag)
        if node is None:
            node = _element_after(root, tag, ("name", "uuid", "genid", "title", "description",
                                              "metadata", "maxMemory", "memory"), "")
        node.text = str(kib)
        node.attrib.clear()
        node.set("unit", "KiB")


def _set_vcpus(root: Any, vcpus: int) -> None:
    node = root.find("vcpu")
    if node is None:
        node = _element_after(root, "vcpu", ("name", "uuid", "genid", "title", "description",
                                             "metadata", "maxMemory", "memory",
                                             "currentMemory", "blkiotune", "memtune",
                                             "memoryBacking"), "")
    node.text = str(vcpus)
    node.attrib.pop("current", None)


def _set_boot(root: Any, devices: list[str] | tuple[str, ...]) -> None:
    if root.find("devices//boot[@order]") is not None:
        raise ValueError(PER_DEVICE_BOOT)
    os_node = root.find("os")
    if os_node is None:
        raise ValueError("boot: this VM's definition has no <os> element")
    old = os_node.findall("boot")
    if old:
        anchor = old[0].getprevious()
    else:
        children = [c for c in os_node if c.tag in _BEFORE_BOOT]
        anchor = children[-1] if children else None
    indent = (anchor.tail if anchor is not None else os_node.text) or ""
    for node in old:
        _remove(node)
    for dev in devices:
        node = etree.Element("boot", dev=dev)
        if anchor is None:
            os_node.insert(0, node)
            node.tail = os_node.text or ""
        else:
            node.tail = anchor.tail
            anchor.addnext(node)
            anchor.tail = indent
        anchor = node


def apply_settings(xml: str, wanted: dict[str, Any], iso_path: str | None) -> str:
    """The new persistent definition: *xml* with the settings *wanted* names.

    ``memory_mib``: ``<memory>`` and ``<currentMemory>`` (unit KiB);
    ``vcpus``: ``<vcpu>`` (its ``current`` attribute dropped, placement and
    cpuset kept); ``boot``: replaces every ``<os><boot/>`` (ValueError
    :data:`PER_DEVICE_BOOT` if devices carry ``<boot order=...>``);
    ``cdrom``: the first CD-ROM drive gets *iso_path* as its file, or no
    medium when *iso_path* is None (ValueError if there is no drive).  The
    user's ``cdrom`` name is not used: the file comes from *iso_path* only.
    Keys not in *wanted* change nothing.
    """
    root = _parse(xml)
    if "memory_mib" in wanted:
        _set_memory(root, int(wanted["memory_mib"]) * 1024)
    if "vcpus" in wanted:
        _set_vcpus(root, int(wanted["vcpus"]))
    if "boot" in wanted:
        _set_boot(root, list(wanted["boot"]))
    if "cdrom" in wanted:
        disk = _cdrom(root)
        if disk is None:
            raise ValueError("cdrom: this VM has no CD-ROM drive; ask the admin to add one")
        _set_source(disk, iso_path)
    return str(etree.tostring(root, encoding="unicode"))


def cdrom_device_xml(xml: str, iso_path: str | None) -> str:
    """The first CD-ROM ``<disk>`` of *xml* holding *iso_path* (None: empty), for
    ``updateDeviceFlags``; ValueError if there is no drive."""
    disk = _cdrom(_parse(xml))
    if disk is None:
        raise ValueError("cdrom: this VM has no CD-ROM drive; ask the admin to add one")
    _set_source(disk, iso_path)
    disk.tail = None
    return str(etree.tostring(disk, encoding="unicode"))
