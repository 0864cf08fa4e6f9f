"""root/definition: a domain's settings read from and written into its XML (pure, SPEC 9)."""

from __future__ import annotations

import pytest
from lxml import etree

from wirt_wrapper.root.definition import (
    NOT_CATALOGUE,
    PER_DEVICE_BOOT,
    apply_settings,
    cdrom_device_xml,
    read_settings,
)
from wirt_wrapper.root.hypervisor import DomainInfo, settings_of

ISO_DIR = "/srv/isos"

DOMAIN = """<domain type='qemu'>
  <name>alice-web</name>
  <metadata><wirt:owner xmlns:wirt='http://wirt.weimarnetz.de/xmlns/owner/1'>alice</wirt:owner></metadata>
  <memory unit='KiB'>98304</memory>
  <currentMemory unit='KiB'>65536</currentMemory>
  <vcpu placement='static' cpuset='0-1' current='1'>2</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <boot dev='hd'/>
    <boot dev='network'/>
    <bootmenu enable='no'/>
  </os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/web.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='/srv/isos/debian.iso'/>
      <target dev='sdc' bus='sata'/>
      <readonly/>
    </disk>
    <disk type='file' device='cdrom'>
      <source file='/srv/isos/second.iso'/>
      <target dev='sdd' bus='sata'/>
      <readonly/>
    </disk>
  </devices>
</domain>"""


def tree(xml: str) -> etree._Element:
    return etree.fromstring(xml.encode())


def with_cdrom(source: str) -> str:
    return DOMAIN.replace("<source file='/srv/isos/debian.iso'/>", source)


def disks(xml: str) -> list[bytes]:
    return [etree.tostring(d) for d in tree(xml).findall("devices/disk")]


def test_read_every_key() -> None:
    held = read_settings(DOMAIN, ISO_DIR)
    assert held["memory_mib"] == 96
    assert held["vcpus"] == 2  # the maximum: <vcpu>'s text, not current
    assert held["boot"] == ["hd", "network"]
    assert held["cdrom"] == "debian.iso"  # the FIRST cdrom drive
    assert held["has_cdrom"] is True
    assert held["cdrom_file"] == "/srv/isos/debian.iso"
    assert held["cdrom_target"] == {"dev": "sdc", "bus": "sata"}


@pytest.mark.parametrize(("memory", "mib"), [
    ("<memory>131072</memory>", 128),  # KiB by default
    ("<memory unit='KiB'>131072</memory>", 128),
    ("<memory unit='k'>131072</memory>", 128),
    ("<memory unit='MiB'>512</memory>", 512),
    ("<memory unit='M'>512</memory>", 512),
    ("<memory unit='GiB'>2</memory>", 2048),
    ("<memory unit='G'>1</memory>", 1024),
    ("<memory unit='bytes'>268435456</memory>", 256),
    ("<memory unit='b'>268435456</memory>", 256),
    ("<memory unit='MB'>1000</memory>", 953),  # 10^6 bytes, rounded down
])
def test_memory_units(memory: str, mib: int) -> None:
    xml = DOMAIN.replace("<memory unit='KiB'>98304</memory>", memory)
    assert read_settings(xml, ISO_DIR)["memory_mib"] == mib


@pytest.mark.parametrize(("source", "shown", "file"), [
    ("", "", ""),  # no medium
    ("<source/>", "", ""),
    ("<source file='/srv/isos/other.iso'/>", "other.iso", "/srv/isos/other.iso"),
    ("<source file='/srv/isos/./other.iso'/>", "other.iso", "/srv/isos/./other.iso"),
    ("<source file='/srv/isos/sub/x.iso'/>", NOT_CATALOGUE, "/srv/isos/sub/x.iso"),
    ("<source file='/srv/isos/../etc/x.iso'/>", NOT_CATALOGUE, "/srv/isos/../etc/x.iso"),
    ("<source file='/home/alice/my.iso'/>", NOT_CATALOGUE, "/home/alice/my.iso"),
    ("<source file='/srv/isos/not an iso'/>", NOT_CATALOGUE, "/srv/isos/not an iso"),
    ("<source dev='/dev/sr0'/>", NOT_CATALOGUE, None),
])
def test_read_cdrom(source: str, shown: str, file: str | None) -> None:
    held = read_settings(with_cdrom(source), ISO_DIR)
    assert (held["cdrom"], held["cdrom_file"], held["has_cdrom"]) == (shown, file, True)


def test_read_without_a_catalogue_or_drive_or_boot() -> None:
    assert read_settings(DOMAIN, "")["cdrom"] == NOT_CATALOGUE  # no iso_dir: nothing is from it
    bare = "<domain><name>x</name><memory>65536</memory><vcpu>1</vcpu><os><type>hvm</type></os>" \
           "<devices><disk device='disk'><source file='/srv/isos/a.iso'/></disk></devices></domain>"
    held = read_settings(bare, ISO_DIR)
    assert (held["boot"], held["cdrom"], held["has_cdrom"], held["cdrom_target"]) == \
        ([], "", False, {})


def test_memory_sets_memory_and_current_memory_in_kib() -> None:
    new = tree(apply_settings(DOMAIN, {"memory_mib": 2048}, None))
    for tag in ("memory", "currentMemory"):
        node = new.find(tag)
        assert (node.text, dict(node.attrib)) == ("2097152", {"unit": "KiB"})
    assert read_settings(etree.tostring(new).decode(), ISO_DIR)["memory_mib"] == 2048
    # a definition that has no <currentMemory> gets one
    plain = DOMAIN.replace("<currentMemory unit='KiB'>65536</currentMemory>", "")
    node = tree(apply_settings(plain, {"memory_mib": 128}, None)).find("currentMemory")
    assert node is not None and node.text == "131072"


def test_vcpus_drop_current_keep_placement() -> None:
    node = tree(apply_settings(DOMAIN, {"vcpus": 4}, None)).find("vcpu")
    assert node.text == "4"
    assert dict(node.attrib) == {"placement": "static", "cpuset": "0-1"}


def test_boot_replaces_every_os_boot() -> None:
    new = tree(apply_settings(DOMAIN, {"boot": ("cdrom", "hd")}, None))
    os_node = new.find("os")
    assert [b.get("dev") for b in os_node.findall("boot")] == ["cdrom", "hd"]
    assert [c.tag for c in os_node] == ["type", "boot", "boot", "bootmenu"]
    # none before: placed after <type> (and <kernel> etc.)
    plain = DOMAIN.replace("<boot dev='hd'/>", "").replace("<boot dev='network'/>", "")
    new = tree(apply_settings(plain, {"boot": ("network",)}, None))
    assert [c.tag for c in new.find("os")] == ["type", "boot", "bootmenu"]


@pytest.mark.parametrize("device", [
    "<disk type='file' device='disk'><source file='/a.img'/><target dev='vdb'/>"
    "<boot order='1'/></disk>",
    "<interface type='network'><source network='default'/><boot order='2'/></interface>",
])
def test_per_device_boot_order_refused(device: str) -> None:
    xml = DOMAIN.replace("<devices>", f"<devices>{device}")
    with pytest.raises(ValueError) as caught:
        apply_settings(xml, {"boot": ("hd",)}, None)
    assert str(caught.value) == PER_DEVICE_BOOT
    assert "admin set a per-device boot order" in PER_DEVICE_BOOT
    # other keys still apply to such a domain
    assert read_settings(apply_settings(xml, {"vcpus": 1}, None), ISO_DIR)["vcpus"] == 1


def test_cdrom_set_from_the_argument_only() -> None:
    """The file is iso_path, never the name the user wrote (which here even differs)."""
    new = apply_settings(DOMAIN, {"cdrom": "evil.iso"}, "/srv/isos/installer.iso")
    held = read_settings(new, ISO_DIR)
    assert (held["cdrom"], held["cdrom_file"]) == ("installer.iso", "/srv/isos/installer.iso")
    assert "evil" not in new
    first, second = tree(new).findall("devices/disk[@device='cdrom']")
    assert first.find("target").get("dev") == "sdc"
    assert second.find("source").get("file") == "/srv/isos/second.iso"  # only the first
    assert disks(new)[0] == disks(DOMAIN)[0]  # the hard disk is untouched


def test_cdrom_into_an_empty_drive_and_eject() -> None:
    empty = with_cdrom("")
    new = apply_settings(empty, {"cdrom": "a.iso"}, "/srv/isos/a.iso")
    disk = tree(new).find("devices/disk[@device='cdrom']")
    assert [c.tag for c in disk] == ["driver", "source", "target", "readonly"]
    assert disk.get("type") == "file"
    ejected = apply_settings(DOMAIN, {"cdrom": None}, None)
    held = read_settings(ejected, ISO_DIR)
    assert (held["cdrom"], held["cdrom_file"], held["has_cdrom"]) == ("", "", True)
    assert tree(ejected).find("devices/disk[@device='cdrom']").find("source") is None
    assert disks(ejected)[0] == disks(DOMAIN)[0]
    assert disks(ejected)[2] == disks(DOMAIN)[2]
    # a block-device medium becomes a file
    block = with_cdrom("<source dev='/dev/sr0'/>").replace(
        "<disk type='file' device='cdrom'>\n      <driver", "<disk type='block' device='cdrom'>"
        "\n      <driver")
    disk = tree(apply_settings(block, {"cdrom": "a.iso"}, "/srv/isos/a.iso")).find(
        "devices/disk[@device='cdrom']")
    assert (disk.get("type"), dict(disk.find("source").attrib)) == \
        ("file", {"file": "/srv/isos/a.iso"})


def test_no_cdrom_drive_refused() -> None:
    bare = DOMAIN.split("<disk type='file' device='cdrom'>")[0] + "</devices></domain>"
    with pytest.raises(ValueError, match="no CD-ROM drive"):
        apply_settings(bare, {"cdrom": "a.iso"}, "/srv/isos/a.iso")
    with pytest.raises(ValueError, match="no CD-ROM drive"):
        cdrom_device_xml(bare, None)
    assert read_settings(apply_settings(bare, {"vcpus": 3}, None), ISO_DIR)["vcpus"] == 3


def test_only_named_keys_change() -> None:
    assert tree(apply_settings(DOMAIN, {}, "/srv/isos/x.iso")) is not None
    assert etree.tostring(tree(apply_settings(DOMAIN, {}, "/srv/isos/x.iso"))) == \
        etree.tostring(tree(DOMAIN))
    new = apply_settings(DOMAIN, {"vcpus": 3}, "/srv/isos/x.iso")  # no "cdrom": path ignored
    before, after = read_settings(DOMAIN, ISO_DIR), read_settings(new, ISO_DIR)
    assert {k: v for k, v in after.items() if k != "vcpus"} == \
        {k: v for k, v in before.items() if k != "vcpus"}
    # the metadata (owner) is kept as it was
    assert "<wirt:owner" in new and ">alice</wirt:owner>" in new


def test_cdrom_device_xml() -> None:
    disk = tree(cdrom_device_xml(DOMAIN, "/srv/isos/b.iso"))
    assert disk.tag == "disk" and disk.get("device") == "cdrom"
    assert disk.find("source").get("file") == "/srv/isos/b.iso"
    assert disk.find("target").get("dev") == "sdc"
    assert tree(cdrom_device_xml(DOMAIN, None)).find("source") is None


def test_settings_of_and_status() -> None:
    shut_off = settings_of(DOMAIN, ISO_DIR)
    assert shut_off == {"memory_mib": 96, "vcpus": 2, "boot": ["hd", "network"],
                        "cdrom": "debian.iso", "has_cdrom": True, "restart_needed": False}
    live = DOMAIN.replace("<domain type='qemu'>", "<domain type='qemu' id='7'>")
    assert settings_of(live, ISO_DIR)["restart_needed"] is None  # persistent one not read
    assert settings_of(DOMAIN, ISO_DIR, live)["restart_needed"] is False
    bigger = apply_settings(DOMAIN, {"memory_mib": 128}, None)
    assert settings_of(bigger, ISO_DIR, live)["restart_needed"] is True
    cd_only = apply_settings(DOMAIN, {"cdrom": None}, None)  # a CD change needs no restart
    assert settings_of(cd_only, ISO_DIR, live)["restart_needed"] is False
    info = DomainInfo("d", "shut off", "unknown", False, True, 1, 1, None)
    assert "settings" not in info.as_status()
    info.settings = shut_off
    assert info.as_status()["settings"] == shut_off
