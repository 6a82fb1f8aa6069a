"""The appliance's boot plan (vigil.engine.appliance.plan): what a boot does from the configuration
volume's settings and files and the kernel command line, decided without side effects. The boot
itself (bridge, networkd, sshd, engine) runs in the live image under QEMU: tests/image."""
from __future__ import annotations

import pytest
import yaml

from vigil.engine import appliance
from vigil.engine.appliance import plan

pytestmark = pytest.mark.unit

FILES = {"mqtt.password": b"s3cret\n", "manager-signing.pub": b"-----BEGIN PUBLIC KEY-----\nx\n",
         "mqtt-ca.crt": b"-----BEGIN CERTIFICATE-----\nx\n"}
SETTINGS = {"engine_id": "edge-1",
            "management": {"interface": "eth0", "address": "192.0.2.10/24", "gateway": "192.0.2.1"},
            "manager": {"host": "192.0.2.5", "port": 8883},
            "management_networks": ["192.0.2.0/24"]}


def test_complete_configuration_gives_the_engine_yaml_a_fleet_engine_gets():
    p = plan(SETTINGS, "BOOT_IMAGE=/live/vmlinuz boot=live", FILES, True)
    assert p.errors == [] and p.missing == [] and p.configure_mgmt
    doc = p.engine_yaml
    assert doc["engine_id"] == "edge-1"
    assert doc["mqtt"] == {"host": "192.0.2.5", "port": 8883, "username": "edge-1",
                           "password_file": "/etc/vigil/mqtt.password", "tls": True,
                           "ca_file": "/etc/vigil/mqtt-ca.crt"}
    assert doc["bridge"] == {"name": "br0", "ports": ["eth1", "eth2"]}
    assert doc["enforcement"]["manager_public_key"] == "/etc/vigil/manager-signing.pub"
    assert doc["enforcement"]["management_networks"] == ["192.0.2.0/24"]
    assert doc["detect"]["never_block"] == ["192.0.2.0/24"]
    # the password never goes into engine.yaml, only its file's path
    assert "s3cret" not in yaml.safe_dump(doc)


def test_nothing_configured_still_bridges_the_default_ports_and_lists_everything_missing():
    p = plan(None, "boot=live", {}, False)
    assert p.bridge_ports == ["eth1", "eth2"] and p.engine_yaml is None
    text = "\n".join(p.missing)
    for needed in ("VIGIL-CONFIG", "engine_id", "manager.host", "mqtt.password", "manager-signing.pub",
                   "mqtt-ca.crt"):
        assert needed in text, needed
    assert len(p.missing) == 6


def test_each_missing_file_is_named_alone():
    for name in FILES:
        files = {k: v for k, v in FILES.items() if k != name}
        p = plan(SETTINGS, "", files, True)
        assert p.engine_yaml is None and len(p.missing) == 1 and p.missing[0].startswith(name)


def test_without_tls_no_ca_is_needed():
    settings = {**SETTINGS, "manager": {"host": "192.0.2.5", "port": 1883, "tls": False}}
    p = plan(settings, "", {k: v for k, v in FILES.items() if k != "mqtt-ca.crt"}, True)
    assert p.missing == [] and p.engine_yaml["mqtt"]["tls"] is False and "ca_file" not in p.engine_yaml["mqtt"]


def test_management_nic_as_a_bridge_port_is_refused_and_left_alone():
    settings = {**SETTINGS, "bridge": {"ports": ["eth0", "eth2"]}}
    p = plan(settings, "", FILES, True)
    assert not p.configure_mgmt and p.engine_yaml is None
    assert "management NIC eth0 is a bridge port" in p.errors[0] and "refused" in p.errors[0]
    assert p.bridge_ports == ["eth0", "eth2"]      # the bridge keeps forwarding (fail-open)
    # the same through the kernel command line
    p = plan(SETTINGS, "vigil.mgmt=eth2", FILES, True)
    assert not p.configure_mgmt and "management NIC eth2 is a bridge port" in p.errors[0]


def test_kernel_command_line_gives_and_overrides_non_secret_settings():
    cmd = ("boot=live vigil.engine_id=edge-9 vigil.manager=198.51.100.7 vigil.manager_port=1884 "
           "vigil.mgmt=eth3 vigil.mgmt_address=dhcp vigil.ports=eth4,eth5 vigil.tls=0")
    p = plan(SETTINGS, cmd, FILES, True)
    assert p.errors == [] and p.missing == []
    assert p.engine_yaml["engine_id"] == "edge-9" and p.engine_yaml["mqtt"]["host"] == "198.51.100.7"
    assert p.engine_yaml["mqtt"]["port"] == 1884 and p.engine_yaml["mqtt"]["tls"] is False
    assert p.bridge_ports == ["eth4", "eth5"] and p.cfg.management.interface == "eth3"
    assert p.cfg.management.address == "dhcp"
    # secrets never come from the command line: the password is still the volume's file
    p = plan(None, cmd, {}, False)
    assert any(m.startswith("mqtt.password") for m in p.missing)


def test_unknown_command_line_key_and_bad_values_are_reported_with_their_key():
    p = plan(SETTINGS, "vigil.password=x", FILES, True)
    assert "vigil.password=x" in p.errors[0] and "not a known" in p.errors[0]
    p = plan({**SETTINGS, "management": {"interface": "eth0", "address": "192.0.2.10"}}, "", FILES, True)
    assert p.engine_yaml is None and "management.address" in p.errors[0] and "prefix" in p.errors[0]
    assert p.bridge_ports == ["eth1", "eth2"]       # still bridges
    p = plan({**SETTINGS, "bogus": 1}, "", FILES, True)
    assert "bogus" in p.errors[0] and "unknown key" in p.errors[0]
    p = plan({**SETTINGS, "engine": {"flows": {"interval": 0}}}, "", FILES, True)
    assert p.engine_yaml is None and "flows.interval" in p.errors[0]
    p = plan({**SETTINGS, "console_login": True}, "", FILES, True)
    assert "console_password_hash" in p.errors[0]


def test_engine_settings_merge_over_the_generated_file():
    p = plan({**SETTINGS, "engine": {"flows": {"interval": 5.0}, "learning": {"period": 60}}}, "", FILES, True)
    assert p.engine_yaml["flows"] == {"interval": 5.0} and p.engine_yaml["learning"] == {"period": 60}


def test_networkd_files_configure_only_the_management_nic():
    p = plan(SETTINGS, "", FILES, True)
    files = appliance.networkd_files(p.cfg, p.bridge_ports)
    mgmt = files["10-vigil-management.network"]
    assert "Name=eth0" in mgmt and "Address=192.0.2.10/24" in mgmt and "Gateway=192.0.2.1" in mgmt
    assert "DHCP" not in mgmt and "IPv6AcceptRA=no" in mgmt
    assert "Name=br0 eth1 eth2" in files["05-vigil-bridge.network"] and "Unmanaged=yes" in files["05-vigil-bridge.network"]
    p = plan(SETTINGS, "vigil.mgmt_address=dhcp", FILES, True)
    assert "DHCP=ipv4" in appliance.networkd_files(p.cfg, p.bridge_ports)["10-vigil-management.network"]


# --- the agent: the image's or a persisted upgrade, whichever is newer ---------------------------

def fake_venv(root, version, entry_point=True):
    dist = root / "lib" / "python3.11" / "site-packages" / f"vigil-{version}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vigil\nVersion: {version}\n\nVersion: 9.9.9\n")
    (root / "bin").mkdir()
    (root / "bin" / "python").symlink_to("/usr/bin/python3")
    if entry_point:
        (root / "bin" / "vigil-engine").write_text("#!/bin/sh\n")
    return root


@pytest.mark.parametrize("image, upgrade, winner", [
    ("0.1.0", None, "image"),            # no upgrade installed
    ("0.1.0", "0.1.0.1", "upgrade"),     # an upgrade over SSH survives a reboot of the same image
    ("0.2.0", "0.1.0.1", "image"),       # a newer image with the same persistence wins
    ("0.1.0", "0.1", "image"),           # equal releases: the image's own agent
    ("0.1.0", "0.1.0+local", "image"),   # a local or pre-release part does not raise the release
    ("0.1.0", "1.0.0", "upgrade"),
    ("0.10.0", "0.9.0", "image"),        # numbers, not strings
    ("0.1.0", "next", "image"),          # not a release number: never preferred
    (None, "0.1.0", "upgrade"),          # the image's version unreadable: the installed upgrade
])
def test_the_newer_agent_is_chosen(image, upgrade, winner):
    c = appliance.choose_agent(image, upgrade, True)
    assert c.source == winner, c
    assert c.venv == (appliance.UPGRADE_VENV if winner == "upgrade" else appliance.IMAGE_VENV)
    assert c.reason


def test_an_incomplete_upgrade_is_not_chosen():
    c = appliance.choose_agent("0.1.0", "0.2.0", False)
    assert c.source == "image" and "incomplete" in c.reason


def test_select_agent_reads_both_venvs_and_links_the_newer_one(tmp_path):
    image = fake_venv(tmp_path / "image", "0.1.0")
    upgrade = fake_venv(tmp_path / "upgrade", "0.1.1")
    link = tmp_path / "run" / "agent"
    assert appliance.venv_version(image) == "0.1.0"     # the first Version: header only
    choice, changed = appliance.select_agent(link, image, upgrade)
    assert (choice.source, choice.version, changed) == ("upgrade", "0.1.1", True)
    assert link.resolve() == upgrade.resolve()
    assert appliance.select_agent(link, image, upgrade)[1] is False     # already linked
    # the upgrade's entry point gone (a half-finished install): back to the image
    (upgrade / "bin" / "vigil-engine").unlink()
    choice, changed = appliance.select_agent(link, image, upgrade)
    assert (choice.source, changed) == ("image", True) and link.resolve() == image.resolve()
    # nothing installed at all under the upgrade's path
    choice, _ = appliance.select_agent(link, image, tmp_path / "absent")
    assert choice.source == "image" and choice.reason == "no upgrade installed"


def test_a_flow_set_engine_gets_br_netfilters_hooks_switched_off_at_boot():
    p = plan({**SETTINGS, "engine": {"flows": {"source": "flowset"}}}, "", FILES, True)
    assert p.engine_yaml["flows"]["source"] == "flowset"
    assert appliance.datapath_sysctls(p.engine_yaml) == [
        ("net.bridge.bridge-nf-call-iptables", "0"), ("net.bridge.bridge-nf-call-ip6tables", "0")]
    assert appliance.datapath_sysctls(plan(SETTINGS, "", FILES, True).engine_yaml) == []
    for doc in ({"flows": {"source": "auto"}}, {"flows": None}, {"flows": "flowset"}):
        assert appliance.datapath_sysctls(doc) == []
