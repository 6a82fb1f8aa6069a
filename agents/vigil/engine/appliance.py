"""The engine appliance's boot step: ``python -m vigil.engine.appliance boot``.

Run by ``vigil-appliance.service`` (installed by roles/vigil_engine in image mode) on every boot of
the live image, before the network and before ``vigil-engine.service``; never on the engine's own
path.  It reads the site configuration from the volume labelled ``VIGIL-CONFIG`` (non-secret
settings may also come from the kernel command line, ``vigil.<key>=``) and then:

1. builds the transparent bridge at once, with the configured ports or the documented defaults
   (``eth1``, ``eth2``): the appliance forwards even when nothing else is configured (fail-open);
2. configures the management NIC with systemd-networkd (static or DHCP); the management NIC is
   never a bridge port: such a configuration is refused with a message and the NIC left alone;
3. makes the SSH host keys on first boot, kept with the engine's state (a live-boot persistence
   partition keeps ``/var/lib/vigil``), and lets operators in with their public keys only;
4. writes ``/etc/vigil/engine.yaml``, the broker password and the keys, only when everything the
   engine needs is there, and otherwise prints on the console exactly what is missing (the engine's
   unit is then skipped, not crash-looping);
5. picks the agent the engine runs: the image's (``/opt/vigil/venv``) or an upgrade installed over
   SSH by roles/vigil_engine (``/var/lib/vigil/agent/venv``, kept by the persistence partition),
   whichever is newer, and links ``/run/vigil/appliance/agent`` to it (the engine's unit runs
   ``agent/bin/vigil-engine``).

The configuration volume's layout and every key: image/README.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import ConfigError, from_dict
from .config import EngineConfig, check_id

LABEL = "VIGIL-CONFIG"
# FAT labels hold 11 characters: a FAT volume (a USB stick) is labelled VIGIL-CONF instead
LABELS = (LABEL, "VIGIL-CONF")
SETTINGS_FILE = "appliance.yaml"
PASSWORD_FILE = "mqtt.password"
PUBKEY_FILE = "manager-signing.pub"
CA_FILE = "mqtt-ca.crt"
KEYS_FILE = "authorized_keys"
IMAGE_VENV = Path("/opt/vigil/venv")                 # the agent in the image (RAM overlay at run time)
UPGRADE_VENV = Path("/var/lib/vigil/agent/venv")     # an upgrade installed over SSH, kept with the state
AGENT_LINK = Path("/run/vigil/appliance/agent")      # the engine's unit runs AGENT_LINK/bin/vigil-engine
DEFAULT_PORTS = ["eth1", "eth2"]
DEFAULT_MGMT = "eth0"
PREFIX = "vigil-appliance:"
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


@dataclass(frozen=True)
class Management:
    interface: str = DEFAULT_MGMT
    address: str = "dhcp"                      # "dhcp" or an address with its prefix, 192.0.2.10/24
    gateway: str | None = None
    dns: list[str] = field(default_factory=list)

    def __post_init__(self):
        if not _IFNAME.match(self.interface):
            raise ValueError(f"interface: not an interface name: {self.interface!r}")
        if self.address != "dhcp":
            try:
                iface = ipaddress.ip_interface(self.address)
            except ValueError:
                raise ValueError(f"address: 'dhcp' or an address with its prefix length, got {self.address!r}") from None
            if "/" not in self.address or iface.network.prefixlen == iface.max_prefixlen:
                raise ValueError(f"address: give the prefix length too (e.g. 192.0.2.10/24), got {self.address!r}")
        for key, values in (("gateway", [self.gateway] if self.gateway else []), ("dns", self.dns)):
            for v in values:
                try:
                    ipaddress.ip_address(v)
                except ValueError:
                    raise ValueError(f"{key}: not an IP address: {v!r}") from None


@dataclass(frozen=True)
class Bridge:
    name: str = "br0"
    ports: list[str] = field(default_factory=lambda: list(DEFAULT_PORTS))

    def __post_init__(self):
        if not _IFNAME.match(self.name):
            raise ValueError(f"name: not an interface name: {self.name!r}")
        if len(self.ports) != 2 or len(set(self.ports)) != 2:
            raise ValueError(f"ports: exactly two different data ports, got {self.ports}")
        for p in self.ports:
            if not _IFNAME.match(p):
                raise ValueError(f"ports: not an interface name: {p!r}")


@dataclass(frozen=True)
class Manager:
    host: str | None = None
    port: int = 8883
    tls: bool = True

    def __post_init__(self):
        if not 0 < self.port < 65536:
            raise ValueError(f"port: must be 1..65535, got {self.port}")
        if self.host is not None and not re.match(r"^[A-Za-z0-9.:_-]{1,253}$", self.host):
            raise ValueError(f"host: not a host name or address: {self.host!r}")


@dataclass(frozen=True)
class ApplianceConfig:
    engine_id: str | None = None
    management: Management = field(default_factory=Management)
    bridge: Bridge = field(default_factory=Bridge)
    manager: Manager = field(default_factory=Manager)
    management_networks: list[str] = field(default_factory=list)
    gateways: list[str] = field(default_factory=list)
    console_login: bool = False
    console_password_hash: str | None = None
    engine: dict[str, Any] = field(default_factory=dict)   # merged over the generated engine.yaml

    def __post_init__(self):
        if self.engine_id is not None:
            check_id(self.engine_id, "engine_id")
        if self.console_login and not (self.console_password_hash or "").startswith("$"):
            raise ValueError("console_password_hash: console_login needs a crypt(3) hash "
                             "(mkpasswd -m yescrypt); no password is ever stored in the image")


# Non-secret settings the kernel command line may give (and override): vigil.<name>=<value>.
CMDLINE_KEYS = {
    "engine_id": ("engine_id",),
    "mgmt": ("management", "interface"),
    "mgmt_address": ("management", "address"),
    "gateway": ("management", "gateway"),
    "dns": ("management", "dns"),
    "ports": ("bridge", "ports"),
    "manager": ("manager", "host"),
    "manager_port": ("manager", "port"),
    "tls": ("manager", "tls"),
}


def cmdline_settings(cmdline: str) -> tuple[dict, list[str]]:
    """The ``vigil.*`` settings of a kernel command line as a settings tree, and its problems."""
    tree: dict = {}
    problems = []
    for word in cmdline.split():
        if not word.startswith("vigil."):
            continue
        name, sep, value = word[len("vigil."):].partition("=")
        path = CMDLINE_KEYS.get(name)
        if path is None or not sep:
            problems.append(f"kernel command line: {word!r} is not a known vigil.<key>=<value> "
                            f"(known: {', '.join(sorted(CMDLINE_KEYS))})")
            continue
        conv: Any = value
        if name in ("ports", "dns"):
            conv = [v for v in value.split(",") if v]
        elif name == "manager_port":
            conv = int(value) if value.isdigit() else value
        elif name == "tls":
            conv = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}.get(value.lower(), value)
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = conv
    return tree, problems


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@dataclass
class Plan:
    """What one boot does, decided from the configuration alone (no side effects; unit-tested)."""
    cfg: ApplianceConfig
    bridge_ports: list[str]
    configure_mgmt: bool
    missing: list[str] = field(default_factory=list)   # what the engine still needs
    errors: list[str] = field(default_factory=list)    # what was refused, and why
    engine_yaml: dict | None = None                     # written only when nothing is missing


def plan(settings: dict | None, cmdline: str, files: dict[str, bytes], volume_found: bool) -> Plan:
    """Decide the boot from the volume's settings, the kernel command line and the volume's files."""
    errors: list[str] = []
    missing: list[str] = []
    if not volume_found:
        missing.append(f"configuration volume: no filesystem labelled {LABEL} (VIGIL-CONF on FAT) "
                       f"(it holds {SETTINGS_FILE}, {PASSWORD_FILE}, {PUBKEY_FILE}, {CA_FILE})")
    cmd_tree, cmd_problems = cmdline_settings(cmdline)
    errors += cmd_problems
    tree = merge(settings or {}, cmd_tree)
    try:
        cfg = from_dict(tree, ApplianceConfig, source=f"{LABEL}/{SETTINGS_FILE} + kernel command line")
    except ConfigError as exc:
        errors.append(f"configuration refused: {exc}")
        # the bridge still comes up (fail-open); only what parses separately is kept
        cfg = ApplianceConfig()
        try:
            cfg = dataclasses.replace(cfg, bridge=from_dict(tree.get("bridge", {}), Bridge, "bridge", "bridge"))
        except (ConfigError, TypeError, AttributeError):
            pass
        missing.append("a valid configuration (see the error above); the engine stays stopped")
        return Plan(cfg, list(cfg.bridge.ports), False, missing, errors)

    ports = list(cfg.bridge.ports)
    mgmt = cfg.management.interface
    configure_mgmt = True
    if mgmt in ports:
        errors.append(f"management NIC {mgmt} is a bridge port ({' '.join(ports)}): refused; the "
                      f"management NIC is never bridged. {mgmt} is left unconfigured and the engine "
                      "stays stopped; give management.interface and bridge.ports distinct NICs")
        configure_mgmt = False
    if not cfg.engine_id:
        missing.append(f"engine_id ({SETTINGS_FILE} or vigil.engine_id= on the kernel command line)")
    if not cfg.manager.host:
        missing.append(f"manager.host, the broker's address ({SETTINGS_FILE} or vigil.manager=)")
    if not files.get(PASSWORD_FILE, b"").strip():
        missing.append(f"{PASSWORD_FILE}: the engine's broker password (a file on the volume)")
    if not files.get(PUBKEY_FILE, b"").strip():
        missing.append(f"{PUBKEY_FILE}: the manager's public signing key (PEM; rule sets are "
                       "applied only when signed by it)")
    if cfg.manager.tls and not files.get(CA_FILE, b"").strip():
        missing.append(f"{CA_FILE}: the fleet CA's certificate (manager.tls is true)")
    result = Plan(cfg, ports, configure_mgmt, missing, errors)
    if not missing and configure_mgmt:
        try:
            result.engine_yaml = engine_yaml(cfg)
        except ConfigError as exc:
            result.errors.append(f"configuration refused: {exc} (from {SETTINGS_FILE}'s engine: settings)")
            result.missing.append("a valid engine configuration; the engine stays stopped")
    return result


def engine_yaml(cfg: ApplianceConfig, config_dir: Path = Path("/etc/vigil")) -> dict:
    """engine.yaml as roles/vigil_engine/vars/main.yml writes it for a fleet engine."""
    nets = list(cfg.management_networks)
    base = {
        "engine_id": cfg.engine_id,
        "mqtt": {"host": cfg.manager.host, "port": cfg.manager.port, "username": cfg.engine_id,
                 "password_file": str(config_dir / PASSWORD_FILE), "tls": cfg.manager.tls},
        "state_dir": "/var/lib/vigil/engine",
        "bridge": {"name": cfg.bridge.name, "ports": list(cfg.bridge.ports)},
        "detect": {"never_block": nets + list(cfg.gateways)},
        "enforcement": {"manager_public_key": str(config_dir / PUBKEY_FILE),
                        "management_networks": nets, "gateways": list(cfg.gateways)},
    }
    if cfg.manager.tls:
        base["mqtt"]["ca_file"] = str(config_dir / CA_FILE)
    doc = merge(base, cfg.engine)
    from_dict(doc, EngineConfig, source="engine.yaml")  # raises ConfigError naming the key
    return doc


def datapath_sysctls(engine_yaml: dict) -> list[tuple[str, str]]:
    """The sysctls the engine's datapath needs beyond the image's sysctl.d, which the engine's unit
    cannot write (/proc/sys is read-only to it): the flow-set datapath needs no br_netfilter hook,
    and the image switches them on for conntrack."""
    flows = engine_yaml.get("flows") if isinstance(engine_yaml.get("flows"), dict) else {}
    if flows.get("source") != "flowset":
        return []
    return [("net.bridge.bridge-nf-call-iptables", "0"), ("net.bridge.bridge-nf-call-ip6tables", "0")]


def networkd_files(cfg: ApplianceConfig, bridge_ports: list[str]) -> dict[str, str]:
    """systemd-networkd files: the management NIC configured, the bridge and its ports left alone."""
    m = cfg.management
    lines = ["[Match]", f"Name={m.interface}", "", "[Network]", "LinkLocalAddressing=no", "IPv6AcceptRA=no"]
    if m.address == "dhcp":
        lines.append("DHCP=ipv4")
    else:
        lines.append(f"Address={m.address}")
    if m.gateway:
        lines.append(f"Gateway={m.gateway}")
    lines += [f"DNS={d}" for d in m.dns]
    unmanaged = ["[Match]", f"Name={cfg.bridge.name} {' '.join(bridge_ports)}", "", "[Link]", "Unmanaged=yes"]
    return {"05-vigil-bridge.network": "\n".join(unmanaged) + "\n",
            "10-vigil-management.network": "\n".join(lines) + "\n"}


def venv_version(venv: Path) -> str | None:
    """The version of the vigil package installed in a venv (its dist-info), or None."""
    for meta in sorted(venv.glob("lib/python3*/site-packages/vigil-*.dist-info/METADATA")):
        with meta.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    break                       # the headers end at the first empty line
                if line.startswith("Version:"):
                    return line.split(":", 1)[1].strip()
    return None


_RELEASE = re.compile(r"^v?(\d{1,9}(?:\.\d{1,9}){0,9})(?![.\d])")


def release(version: str | None) -> tuple[int, ...] | None:
    """A version's release numbers (PEP 440's leading N.N.N), trailing zeros dropped; None when it
    has none.  Pre-, post- and local parts are ignored: an upgrade must raise the release."""
    m = _RELEASE.match((version or "").strip())
    if not m:
        return None
    parts = [int(x) for x in m.group(1).split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


@dataclass(frozen=True)
class AgentChoice:
    venv: Path
    source: str                 # "image" or "upgrade"
    version: str | None
    reason: str


def choose_agent(image_version: str | None, upgrade_version: str | None, upgrade_usable: bool,
                 image_venv: Path = IMAGE_VENV, upgrade_venv: Path = UPGRADE_VENV) -> AgentChoice:
    """The newer of the image's agent and the persisted upgrade.  The upgrade wins only when its
    release is strictly higher, so a newer image booted with the same persistence runs its own
    agent, and an equal one prefers the image (what was built and checked with it)."""
    img, up = release(image_version), release(upgrade_version)
    if upgrade_version is None:
        return AgentChoice(image_venv, "image", image_version, "no upgrade installed")
    if not upgrade_usable:
        return AgentChoice(image_venv, "image", image_version,
                           f"the upgrade {upgrade_version} in {upgrade_venv} is incomplete (no bin/vigil-engine)")
    if up is None:
        return AgentChoice(image_venv, "image", image_version,
                           f"the upgrade's version {upgrade_version!r} is not a release number")
    if img is None or up > img:
        return AgentChoice(upgrade_venv, "upgrade", upgrade_version,
                           f"newer than the image's {image_version}")
    return AgentChoice(image_venv, "image", image_version,
                       f"the upgrade {upgrade_version} in {upgrade_venv} is not newer")


def select_agent(link: Path = AGENT_LINK, image_venv: Path = IMAGE_VENV,
                 upgrade_venv: Path = UPGRADE_VENV) -> tuple[AgentChoice, bool]:
    """Choose the agent and point ``link`` at its venv (atomically); whether the link changed."""
    usable = (upgrade_venv / "bin" / "vigil-engine").is_file() and (upgrade_venv / "bin" / "python").exists()
    choice = choose_agent(venv_version(image_venv), venv_version(upgrade_venv), usable, image_venv, upgrade_venv)
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() and os.readlink(link) == str(choice.venv):
        return choice, False
    tmp = link.with_name(link.name + ".new")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(choice.venv)
    os.replace(tmp, link)
    return choice, True


def say_agent(choice: AgentChoice) -> None:
    say(f"agent vigil {choice.version or '?'} from the {choice.source} ({choice.venv}): {choice.reason}")


# --- side effects (boot only) ---------------------------------------------------------------------

def say(msg: str) -> None:
    print(f"{PREFIX} {msg}", flush=True)


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=60)


def find_volume(timeout: float) -> str | None:
    # udev has seen every disk the firmware found once its queue is empty; then a short grace
    run("udevadm", "settle", "--timeout=30", check=False)
    deadline = time.monotonic() + timeout
    while True:
        for label in LABELS:
            dev = Path("/dev/disk/by-label") / label
            if dev.exists():
                return str(dev.resolve())
            r = run("blkid", "-l", "-t", f"LABEL={label}", "-o", "device", check=False)
            if r.returncode == 0 and r.stdout.strip():
                return r.stdout.strip().splitlines()[0]
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.5)


def read_volume(device: str) -> tuple[dict | None, dict[str, bytes], list[str]]:
    """The settings and files of the configuration volume (mounted read-only, briefly)."""
    problems: list[str] = []
    files: dict[str, bytes] = {}
    settings: dict | None = None
    mnt = Path(tempfile.mkdtemp(prefix="vigil-config.", dir="/run"))
    try:
        r = run("mount", "-o", "ro,nosuid,nodev,noexec", device, str(mnt), check=False)
        if r.returncode != 0:
            return None, files, [f"configuration volume {device}: cannot mount: {r.stderr.strip()}"]
        try:
            for name in (SETTINGS_FILE, PASSWORD_FILE, PUBKEY_FILE, CA_FILE, KEYS_FILE):
                p = mnt / name
                if p.is_file():
                    if p.stat().st_size > 1 << 20:
                        problems.append(f"{LABEL}/{name}: larger than 1 MiB, ignored")
                        continue
                    files[name] = p.read_bytes()
        finally:
            run("umount", str(mnt), check=False)
    finally:
        shutil.rmtree(mnt, ignore_errors=True)
    if SETTINGS_FILE in files:
        try:
            settings = yaml.safe_load(files[SETTINGS_FILE].decode("utf-8")) or {}
            if not isinstance(settings, dict):
                problems.append(f"{LABEL}/{SETTINGS_FILE}: must be a mapping of settings")
                settings = {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            problems.append(f"{LABEL}/{SETTINGS_FILE}: not valid YAML: {exc}")
            settings = {}
    return settings, files, problems


def wait_links(names: list[str], timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        absent = [n for n in names if not Path("/sys/class/net", n).exists()]
        if not absent or time.monotonic() >= deadline:
            return absent
        time.sleep(0.2)


def sysctl(key: str, value: str) -> None:
    p = Path("/proc/sys") / key.replace(".", "/")
    try:
        p.write_text(value)
    except OSError:
        pass


# Written by the initramfs's step (image/config/includes.chroot/etc/initramfs-tools/scripts/
# init-premount/vigil-bridge) when it made the bridge; /run is carried over to the root filesystem.
INITRAMFS_BRIDGE = Path("/run/vigil/initramfs-bridge")


def bring_up_bridge(name: str, ports: list[str], made_early: Path = INITRAMFS_BRIDGE,
                    wait: float = 30.0) -> tuple[list[str], list[str]]:
    """The transparent bridge: no STP, no forwarding delay, no address, IPv6 off. Idempotent.

    The initramfs may have made a bridge already (so that the appliance forwards half a minute and
    more sooner); it is adopted, and corrected to this configuration, which wins: ports that are
    not configured are taken out (first, so that a NIC the configuration makes the management NIC
    leaves the bridge even when a configured port is missing), a bridge of another name is removed.
    Returns (configured ports not found, corrections made)."""
    corrections: list[str] = []
    try:
        early = made_early.read_text().split()
    except OSError:
        early = []
    if early and early[0] != name and Path("/sys/class/net", early[0], "bridge").is_dir():
        run("ip", "link", "del", early[0])
        corrections.append(f"removed bridge {early[0]} (the configuration names {name})")
    brif = Path("/sys/class/net", name, "brif")
    existing = sorted(p.name for p in brif.iterdir()) if brif.is_dir() else []
    for p in existing:
        if p not in ports:
            run("ip", "link", "set", p, "nomaster")
            corrections.append(f"took {p} out of {name}")
    absent = wait_links(ports, wait)
    if absent:
        return absent, corrections
    sysctl("net.ipv4.conf.all.arp_ignore", "1")
    sysctl("net.ipv4.conf.all.arp_announce", "2")
    if not Path("/sys/class/net", name).exists():
        run("ip", "link", "add", name, "type", "bridge", "stp_state", "0", "forward_delay", "0")
    else:   # adopted: its flags as if made here
        run("ip", "link", "set", name, "type", "bridge", "stp_state", "0", "forward_delay", "0")
    sysctl(f"net.ipv6.conf.{name}.disable_ipv6", "1")
    for p in ports:
        if existing and p not in existing:
            corrections.append(f"added {p} to {name}")
        sysctl(f"net.ipv6.conf.{p}.disable_ipv6", "1")
        run("ip", "addr", "flush", "dev", p)
        run("ip", "link", "set", p, "master", name, "up")
    run("ip", "link", "set", name, "up")
    return [], corrections


def ssh_setup(state: Path, run_dir: Path, keys: bytes | None) -> bool:
    """Host keys made once and kept with the state; sshd only with an operator key, keys only."""
    kdir = state / "ssh"
    kdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = kdir / "ssh_host_ed25519_key"
    if not key.exists():
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vigil-appliance", "-f", str(key))
        say(f"made the SSH host key {key} ({fingerprint(key)})")
    if not keys or not keys.strip():
        return False
    akdir = run_dir / "authorized_keys"
    akdir.mkdir(parents=True, exist_ok=True, mode=0o755)
    ak = akdir / "root"
    ak.write_bytes(keys if keys.endswith(b"\n") else keys + b"\n")
    ak.chmod(0o600)
    (run_dir / "sshd_config").write_text(
        f"# written by vigil-appliance at boot\nHostKey {key}\n"
        f"AuthorizedKeysFile {akdir}/%u\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM yes\nX11Forwarding no\n"
        "Subsystem sftp /usr/lib/openssh/sftp-server\n")
    return True


def fingerprint(key: Path) -> str:
    r = run("ssh-keygen", "-l", "-f", str(key), check=False)
    return r.stdout.split()[1] if r.returncode == 0 and len(r.stdout.split()) > 1 else "?"


def write_secret(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def boot(config_dir: Path, state: Path, run_dir: Path, network_dir: Path, cmdline: str,
         volume_timeout: float) -> int:
    run_dir.mkdir(parents=True, exist_ok=True)
    device = find_volume(volume_timeout)
    settings, files, problems = (None, {}, [])
    if device:
        settings, files, problems = read_volume(device)
        say(f"configuration volume found on {device}")
    p = plan(settings, cmdline, files, device is not None)
    p.errors[:0] = problems
    for e in p.errors:
        say(f"ERROR {e}")

    early = INITRAMFS_BRIDGE.exists()
    absent, corrections = bring_up_bridge(p.cfg.bridge.name, p.bridge_ports)
    if corrections:
        say(f"bridge made in the initramfs corrected to the configuration ({len(corrections)} "
            f"correction{'s' if len(corrections) > 1 else ''}): {'; '.join(corrections)}")
    if absent:
        say(f"ERROR bridge ports not found: {' '.join(absent)} (NICs here: "
            f"{' '.join(sorted(n.name for n in Path('/sys/class/net').iterdir()))}); no bridge")
    else:
        say(f"bridge {p.cfg.bridge.name} forwarding between {' and '.join(p.bridge_ports)} "
            f"(no address, no STP{'; made in the initramfs, adopted' if early else ''})")

    try:
        say_agent(select_agent(run_dir / AGENT_LINK.name, IMAGE_VENV, state / "agent" / "venv")[0])
    except OSError as exc:       # the image's agent then, whatever the upgrade's state
        say(f"ERROR choosing the agent: {exc}; the image's agent runs")
        (run_dir / AGENT_LINK.name).unlink(missing_ok=True)
        (run_dir / AGENT_LINK.name).symlink_to(IMAGE_VENV)

    if p.configure_mgmt:
        network_dir.mkdir(parents=True, exist_ok=True)
        for name, text in networkd_files(p.cfg, p.bridge_ports).items():
            (network_dir / name).write_text(text)
        say(f"management NIC {p.cfg.management.interface}: {p.cfg.management.address}"
            + (f" via {p.cfg.management.gateway}" if p.cfg.management.gateway else ""))

    state.mkdir(parents=True, exist_ok=True)
    persistent = run("findmnt", "-n", "-T", str(state), "-o", "SOURCE", check=False).stdout.strip()
    if "persistence" not in persistent and not Path("/run/live/persistence").is_dir():
        say(f"NOTE {state} is not on a persistence partition: identity and rule sets last until reboot")
    if ssh_setup(state / "appliance", run_dir, files.get(KEYS_FILE)):
        say("SSH: operator keys from the volume, no passwords")

    if p.cfg.console_login and p.cfg.console_password_hash:
        run("usermod", "-p", p.cfg.console_password_hash, "root")
        run("systemctl", "unmask", "serial-getty@ttyS0.service", "getty@tty1.service", check=False)
        run("systemctl", "start", "--no-block", "serial-getty@ttyS0.service", "getty@tty1.service", check=False)
        say("console login enabled by the configuration")

    engine_conf = config_dir / "engine.yaml"
    if p.engine_yaml is not None:
        write_secret(config_dir / PASSWORD_FILE, files[PASSWORD_FILE].strip() + b"\n", 0o600)
        write_secret(config_dir / PUBKEY_FILE, files[PUBKEY_FILE], 0o644)
        if CA_FILE in files:
            write_secret(config_dir / CA_FILE, files[CA_FILE], 0o644)
        write_secret(engine_conf, yaml.safe_dump(p.engine_yaml, sort_keys=False).encode(), 0o640)
        for key, value in datapath_sysctls(p.engine_yaml):
            sysctl(key, value)
            say(f"flows.source {p.engine_yaml['flows']['source']}: {key} = {value}")
        say(f"READY engine {p.cfg.engine_id}: bridge forwarding; manager "
            f"{p.cfg.manager.host}:{p.cfg.manager.port}; vigil-engine starts")
        return 0
    engine_conf.unlink(missing_ok=True)
    for m in p.missing:
        say(f"MISSING {m}")
    say("READY unconfigured: the bridge forwards everything (fail-open); vigil-engine stays stopped "
        "until the missing items are on the configuration volume (then reboot)")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vigil.engine.appliance",
                                 description="The engine appliance's boot step (image/README.md)")
    ap.add_argument("action", choices=["boot", "plan", "agent"],
                    help="boot: configure this appliance; plan: print what a boot would do, change nothing; "
                         "agent: choose the image's agent or the persisted upgrade, link it, print the choice")
    ap.add_argument("--config-dir", type=Path, default=Path("/etc/vigil"))
    ap.add_argument("--state", type=Path, default=Path("/var/lib/vigil"))
    ap.add_argument("--run-dir", type=Path, default=Path("/run/vigil/appliance"))
    ap.add_argument("--network-dir", type=Path, default=Path("/run/systemd/network"))
    ap.add_argument("--volume-timeout", type=float, default=2.0,
                    help="seconds to wait for the volume after udev settled")
    ap.add_argument("--settings", type=Path, help="plan: a settings file instead of the volume")
    args = ap.parse_args(argv)
    cmdline = Path("/proc/cmdline").read_text() if Path("/proc/cmdline").exists() else ""
    if args.action == "plan":
        settings = yaml.safe_load(args.settings.read_text()) if args.settings else None
        files = {n: (args.settings.parent / n).read_bytes() for n in (PASSWORD_FILE, PUBKEY_FILE, CA_FILE)
                 if args.settings and (args.settings.parent / n).is_file()}
        p = plan(settings, cmdline, files, args.settings is not None)
        for e in p.errors:
            say(f"ERROR {e}")
        for m in p.missing:
            say(f"MISSING {m}")
        say(f"bridge {' '.join(p.bridge_ports)}; engine.yaml {'ready' if p.engine_yaml else 'not written'}")
        return 0 if p.engine_yaml else 1
    if args.action == "agent":
        choice, changed = select_agent(args.run_dir / AGENT_LINK.name, IMAGE_VENV, args.state / "agent" / "venv")
        say_agent(choice)
        print("changed" if changed else "unchanged")
        return 0
    try:
        return boot(args.config_dir, args.state, args.run_dir, args.network_dir, cmdline, args.volume_timeout)
    except Exception as exc:  # the service must say why, on the console, and the bridge stays
        say(f"ERROR boot step failed: {type(exc).__name__}: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
