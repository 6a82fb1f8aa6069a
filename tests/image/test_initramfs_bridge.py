"""The bridge made in the initramfs (image/config/includes.chroot/etc/initramfs-tools/scripts/
init-premount/vigil-bridge), run here without a boot: in a network namespace of the test's own with
veth NICs named as the appliance's (eth0 management, eth1/eth2 the data ports), once under the
host's sh and tools and once under busybox's sh, awk and sed (what the initramfs has). Then the
root filesystem's boot step (vigil.engine.appliance.bring_up_bridge) adopting and correcting it.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.image

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "image/config/includes.chroot/etc/initramfs-tools/scripts/init-premount/vigil-bridge"
HOOK = ROOT / "image/config/includes.chroot/etc/initramfs-tools/hooks/vigil-bridge"
SHELLS = ["sh", "busybox"]


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} -> {r.returncode}: {r.stderr}")
    return r


@pytest.fixture
def ns():
    """A namespace with eth0..eth2 (veths whose peers p0..p2 stay in it until a test moves them)."""
    name = f"vi11ib-{uuid.uuid4().hex[:6]}"
    extra: list[str] = []
    sh("ip", "netns", "add", name)
    try:
        for i in range(3):
            sh("ip", "-n", name, "link", "add", f"eth{i}", "type", "veth", "peer", "name", f"p{i}")
        yield name, extra
    finally:
        for n in [name, *extra]:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)


def run_script(tmp_path: Path, ns: str, shell: str, cmdline: str = "boot=live",
               settings: str | None = None) -> str:
    """The script as the initramfs runs it; returns its console output."""
    if shell == "busybox" and not shutil.which("busybox"):
        pytest.fail("busybox is not installed: scripts/setup image installs it")
    (tmp_path / "cmdline").write_text(cmdline + "\n")
    volume = "none"
    if settings is not None:
        (tmp_path / "vol").mkdir(exist_ok=True)
        (tmp_path / "vol" / "appliance.yaml").write_text(settings)
        volume = str(tmp_path / "vol")
    env_path = "/usr/sbin:/usr/bin:/sbin:/bin"
    shell_argv = ["sh"]
    if shell == "busybox":
        bb = tmp_path / "bb"
        bb.mkdir(exist_ok=True)
        for applet in ("sh", "awk", "sed", "head", "tail", "tr", "cat", "mkdir"):
            link = bb / applet
            if not link.exists():
                link.symlink_to(shutil.which("busybox"))
        env_path = f"{bb}:{env_path}"
        shell_argv = [str(bb / "sh")]
    r = sh("ip", "netns", "exec", ns, "env", f"PATH={env_path}", f"VIGIL_CMDLINE={tmp_path / 'cmdline'}",
           f"VIGIL_VOLUME_DIR={volume}", f"VIGIL_RUN_DIR={tmp_path / 'run'}", *shell_argv, str(SCRIPT))
    assert r.stderr == "", r.stderr
    return r.stdout


def ports_of(ns: str, bridge: str = "br0") -> list[str]:
    links = json.loads(sh("ip", "-n", ns, "-j", "link", "show").stdout)
    return sorted(link["ifname"] for link in links if link.get("master") == bridge)


def has_link(ns: str, name: str) -> bool:
    return sh("ip", "-n", ns, "link", "show", name, check=False).returncode == 0


def in_ns(ns: str, path: str) -> str:
    return sh("ip", "netns", "exec", ns, "cat", path).stdout.strip()


@pytest.mark.parametrize("shell", SHELLS)
def test_the_default_ports_are_bridged_transparently_and_forward(tmp_path, ns, shell):
    name, extra = ns
    out = run_script(tmp_path, name, shell)
    assert "vigil-initramfs: bridge br0 forwarding between eth1 and eth2 (from the defaults" in out
    assert ports_of(name) == ["eth1", "eth2"]            # the management NIC eth0 is not a port
    assert in_ns(name, "/sys/class/net/br0/bridge/stp_state") == "0"
    assert in_ns(name, "/sys/class/net/br0/bridge/forward_delay") == "0"
    for dev in ("br0", "eth1", "eth2"):
        assert in_ns(name, f"/proc/sys/net/ipv6/conf/{dev}/disable_ipv6") == "1"
    assert in_ns(name, "/proc/sys/net/ipv4/conf/all/arp_ignore") == "1"
    assert in_ns(name, "/proc/sys/net/ipv4/conf/all/arp_announce") == "2"
    addrs = json.loads(sh("ip", "-n", name, "-j", "addr", "show", "br0").stdout)[0]["addr_info"]
    assert addrs == []
    assert (tmp_path / "run" / "initramfs-bridge").read_text() == "br0 eth1 eth2\n"
    # the peers as a client and a server on either side: traffic crosses the bridge
    for i, side in ((1, "c"), (2, "s")):
        other = f"{name}-{side}"
        sh("ip", "netns", "add", other)
        extra.append(other)
        sh("ip", "-n", name, "link", "set", f"p{i}", "netns", other)
        sh("ip", "-n", other, "addr", "add", f"10.99.0.{i}/24", "dev", f"p{i}")
        sh("ip", "-n", other, "link", "set", f"p{i}", "up")
    r = sh("ip", "netns", "exec", f"{name}-c", "ping", "-c", "2", "-W", "2", "10.99.0.2", check=False)
    assert r.returncode == 0, r.stdout
    # run again (idempotent): same bridge, same ports, no error
    out = run_script(tmp_path, name, shell)
    assert "forwarding between eth1 and eth2" in out and ports_of(name) == ["eth1", "eth2"]


VOLUME_BLOCK = """\
engine_id: edge-1   # a comment
management:
  interface: eth2
  address: dhcp
bridge:
  name: br0
  ports:
    - eth0
    - "eth1"
manager:
  host: 192.0.2.5
"""


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("settings,cmdline,ports", [
    (VOLUME_BLOCK, "boot=live", ["eth0", "eth1"]),                                   # block list
    # yaml.safe_dump's layout: list items at their key's indentation, top-level lists after
    ("management:\n  interface: eth1\nbridge:\n  ports:\n  - eth0\n  - eth2\ngateways:\n- 10.0.0.1\n",
     "boot=live", ["eth0", "eth2"]),
    ("bridge:\n  ports: ['eth0', eth2]\nmanagement:\n  interface: eth1\n", "boot=live", ["eth0", "eth2"]),
    # the kernel command line overrides the volume, as in the boot step
    (VOLUME_BLOCK, "boot=live vigil.ports=eth1,eth2 vigil.mgmt=eth0", ["eth1", "eth2"]),
    (None, "boot=live vigil.ports=eth2,eth0 vigil.mgmt=eth1", ["eth0", "eth2"]),
])
def test_the_configured_ports_are_bridged(tmp_path, ns, shell, settings, cmdline, ports):
    name, _ = ns
    out = run_script(tmp_path, name, shell, cmdline, settings)
    assert "vigil-initramfs: bridge br0 forwarding between" in out, out
    assert ports_of(name) == ports


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("settings,cmdline,says", [
    # the management NIC named as a bridge port: refused, never bridged
    (None, "boot=live vigil.ports=eth0,eth1", "refused: management NIC eth0 is a bridge port"),
    ("management:\n  interface: eth1\n", "boot=live", "refused: management NIC eth1 is a bridge port"),
    (VOLUME_BLOCK, "boot=live vigil.mgmt=eth0", "refused: management NIC eth0 is a bridge port"),
    # what this reader cannot be sure of is left to the boot step
    ("bridge: {ports: [eth0, eth2]}\n", "boot=live", "bridge: not a block mapping"),
    ("bridge:\n  ports: &p [eth0, eth2]\n", "boot=live", "an anchor, alias or tag"),
    ("bridge:\n\tports: [eth0, eth2]\n", "boot=live", "a tab in the settings"),
    ("bridge:\n  ports: eth1\n", "boot=live", "bridge.ports: not a list"),
    ("bridge:\n  ports: [eth1, eth2, eth0]\n", "boot=live", "not usable here"),
    (None, "boot=live vigil.ports=eth1,eth1", "not usable here"),
    (None, "boot=live vigil.ports=eth1,eth2;reboot", "not usable here"),
    (None, "boot=live vigil.ports=eth1,eth9", "bridge port eth9 not found yet"),
    # hostile sizes: a long block list stops at its third item (it once cost quadratic time in
    # awk: 400k items 28 s; 7,000 fit under the size cap), a big file is left to the boot step's parser unread
    ("bridge:\n  ports:\n" + "    - x\n" * 7_000, "boot=live", "bridge.ports: more than two"),
    ("bridge:\n  ports: [" + "a" * 100_000 + "]\n", "boot=live", "appliance.yaml over 64 KiB"),
])
def test_no_bridge_when_refused_or_unsure(tmp_path, ns, shell, settings, cmdline, says):
    name, _ = ns
    out = run_script(tmp_path, name, shell, cmdline, settings)
    assert says in out, out[:2000]
    assert "the bridge is left to the boot step" in out
    assert len(out) < 2000, "a console line carries the file's text"
    assert not has_link(name, "br0")
    assert not (tmp_path / "run" / "initramfs-bridge").exists()


def adopt(ns: str, tmp_path: Path, name: str, ports: list[str], wait: float = 30.0) -> tuple[list[str], list[str]]:
    """The boot step's bridge function, in the namespace."""
    code = ("import json, sys; from pathlib import Path; from vigil.engine.appliance import bring_up_bridge; "
            f"print(json.dumps(bring_up_bridge({name!r}, {ports!r}, Path({str(tmp_path / 'run' / 'initramfs-bridge')!r}), {wait!r})))")
    r = sh("ip", "netns", "exec", ns, sys.executable, "-c", code)
    absent, corrections = json.loads(r.stdout)
    return absent, corrections


def test_the_boot_step_adopts_the_bridge_unchanged(tmp_path, ns):
    name, _ = ns
    run_script(tmp_path, name, "sh")
    index = json.loads(sh("ip", "-n", name, "-j", "link", "show", "br0").stdout)[0]["ifindex"]
    assert adopt(name, tmp_path, "br0", ["eth1", "eth2"]) == ([], [])
    assert ports_of(name) == ["eth1", "eth2"]
    assert json.loads(sh("ip", "-n", name, "-j", "link", "show", "br0").stdout)[0]["ifindex"] == index


def test_the_boot_step_corrects_the_ports_to_its_configuration(tmp_path, ns):
    """The volume was not seen in the initramfs (a slow stick): its ports win in the boot step,
    and the NIC it makes the management NIC leaves the bridge."""
    name, _ = ns
    run_script(tmp_path, name, "sh")                         # defaults: eth1 eth2
    absent, corrections = adopt(name, tmp_path, "br0", ["eth0", "eth2"])
    assert absent == []
    assert corrections == ["took eth1 out of br0", "added eth0 to br0"]
    assert ports_of(name) == ["eth0", "eth2"]


def test_the_boot_step_takes_a_port_out_even_when_its_own_ports_are_missing(tmp_path, ns):
    name, _ = ns
    run_script(tmp_path, name, "sh")
    absent, corrections = adopt(name, tmp_path, "br0", ["eth2", "eth3"], wait=1.0)   # no eth3
    assert absent == ["eth3"] and corrections == ["took eth1 out of br0"]
    assert ports_of(name) == ["eth2"]


def test_the_boot_step_replaces_a_bridge_of_another_name(tmp_path, ns):
    name, _ = ns
    run_script(tmp_path, name, "sh")
    absent, corrections = adopt(name, tmp_path, "edge0", ["eth1", "eth2"])
    assert absent == [] and corrections == ["removed bridge br0 (the configuration names edge0)"]
    assert not has_link(name, "br0") and ports_of(name, "edge0") == ["eth1", "eth2"]


def test_the_hook_puts_ip_and_the_modules_into_the_initramfs():
    text = HOOK.read_text()
    assert "copy_exec /bin/ip /usr/lib/vigil/ip" in text
    assert "IP=/usr/lib/vigil/ip" in SCRIPT.read_text()
    for module in ("bridge", "vfat", "nls_cp437", "ext4", "isofs"):
        assert f" {module}" in text.split("for m in", 1)[1].split(";", 1)[0]
    for f in (HOOK, SCRIPT):
        assert f.stat().st_mode & 0o111, f"{f} is not executable (initramfs-tools skips it)"
        assert sh("sh", "-n", str(f)).returncode == 0
