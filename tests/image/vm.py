"""The appliance under QEMU (software emulation) wired into network namespaces of the test's own.

``Site`` holds the namespaces: ``client`` and ``server`` on one /24 (the appliance bridges between
them), and ``mgmt`` with the appliance's management network, a Mosquitto with a TLS listener for
the engine, and a unix-socket listener for a real ``vigil-manager`` on this host. ``Appliance``
boots the ISO with three virtio NICs on tap devices: QEMU creates each tap in this namespace, and
the tap is then moved into its namespace (the open file descriptor keeps working), so the VM's
``eth0`` is the management NIC and ``eth1``/``eth2`` are the client and server sides.
Everything is torn down by ``close()``: QEMU killed, namespaces and processes removed.
"""
from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import yaml

from tests.support.pki import make_pki
from vigil.lab.services import InfluxDB, ManagedProcess

ROOT = Path(__file__).resolve().parents[2]
CLIENT_IP, SERVER_IP = "10.123.0.1", "10.123.0.2"
MGMT_HOST_IP, APPLIANCE_IP = "192.168.123.1", "192.168.123.2"
MQTT_PORT = 8883
# a loaded 2-core host has taken 310 s to the READY line (the boot alone, not a hang): room for that
QEMU_TIMEOUT = float(os.environ.get("VIGIL_IMAGE_BOOT_TIMEOUT", "600"))


def sh(*argv: str, check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} -> {r.returncode}: {r.stderr.strip()[-2000:]}")
    return r


def build_iso() -> Path:
    """scripts/build-image (a no-op when the ISO for these inputs exists)."""
    r = subprocess.run([str(ROOT / "scripts" / "build-image")], capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise RuntimeError(f"scripts/build-image failed ({r.returncode}):\n{r.stderr[-6000:]}")
    return Path(r.stdout.strip().splitlines()[-1])


def iso_boot_files(iso: Path, dest: Path) -> tuple[Path, Path, str]:
    """The ISO's own kernel, initrd and kernel command line (its boot menu's default entry), for a
    boot that adds ``vigil.<key>=`` settings to that line as an operator would at the boot menu."""
    dest.mkdir(parents=True, exist_ok=True)
    sh("xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", "/live/vmlinuz", str(dest / "vmlinuz"),
       "-extract", "/live/initrd.img", str(dest / "initrd.img"),
       "-extract", "/isolinux/live.cfg", str(dest / "live.cfg"), timeout=120)
    for f in ("vmlinuz", "initrd.img", "live.cfg"):
        os.chmod(dest / f, 0o644)
    m = re.search(r"^\s*append\s+(.+)$", (dest / "live.cfg").read_text(), re.M)
    if not m:
        raise RuntimeError(f"no append line in the ISO's isolinux/live.cfg:\n{(dest / 'live.cfg').read_text()}")
    return dest / "vmlinuz", dest / "initrd.img", m.group(1).strip()


def make_config_volume(path: Path, settings: dict | None, files: dict[str, bytes]) -> Path:
    """A small FAT filesystem labelled VIGIL-CONF (FAT's labels hold 11 characters), as an operator
    would make it on a USB stick."""
    path.unlink(missing_ok=True)
    sh("mkfs.vfat", "-C", "-n", "VIGIL-CONF", str(path), "4096")
    src = path.parent / (path.name + ".d")
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir()
    if settings is not None:
        files = {**files, "appliance.yaml": yaml.safe_dump(settings, sort_keys=False).encode()}
    for name, data in files.items():
        (src / name).write_bytes(data)
        sh("mcopy", "-i", str(path), str(src / name), f"::{name}")
    return path


def make_state_disk(path: Path, size_mb: int = 256) -> Path:
    """A live-boot persistence partition (label ``persistence``) keeping /var/lib/vigil."""
    path.unlink(missing_ok=True)
    src = path.parent / (path.name + ".d")
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir()
    (src / "persistence.conf").write_text("/var/lib/vigil union\n")
    with open(path, "wb") as f:
        f.truncate(size_mb << 20)
    sh("mkfs.ext4", "-q", "-F", "-L", "persistence", "-d", str(src), str(path))
    return path


def sweep(run_root: Path) -> None:
    """Remove what a killed earlier run left under run_root: its QEMU and services (pid files), its
    namespaces, its files. A run whose owner (the pytest process) still lives is left alone."""
    if not run_root.is_dir():
        return
    for d in run_root.iterdir():
        try:
            owner = int((d / "owner.pid").read_text())
            if Path(f"/proc/{owner}").exists():
                continue
        except (OSError, ValueError):
            pass
        for pidfile in (d / "pids").glob("*.pid") if (d / "pids").is_dir() else []:
            try:
                os.killpg(int(pidfile.read_text()), 9)
            except (OSError, ValueError):
                pass
        for ns in (d / "namespaces").read_text().split() if (d / "namespaces").exists() else []:
            for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split():
                try:
                    os.kill(int(pid), 9)
                except (OSError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


class Site:
    """The namespaces, the broker and the manager around one appliance."""

    def __init__(self, run_dir: Path):
        self.id = uuid.uuid4().hex[:5]
        self.run_dir = run_dir
        self.ns = {k: f"vi{self.id}-{k}" for k in ("client", "server", "mgmt")}
        self.procs: list[ManagedProcess] = []
        self.influx: InfluxDB | None = None
        self.manager: ManagedProcess | None = None
        self.broker_dir = run_dir / "broker"
        self.sock = self.broker_dir / "mqtt.sock"
        self.passwords: dict[str, str] = {}
        self.pki: dict[str, Path] = {}
        (run_dir / "owner.pid").write_text(str(os.getpid()))
        (run_dir / "namespaces").write_text(" ".join(self.ns.values()))

    def add_namespaces(self) -> "Site":
        for ns in self.ns.values():
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        return self

    def up(self, engine_id: str) -> "Site":
        self.add_namespaces()
        self._broker(engine_id)
        self.influx = InfluxDB(self.run_dir)
        self.influx.start()
        self._manager()
        return self

    def run(self, node: str, *argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", self.ns[node], *argv, check=check, timeout=timeout)

    def popen(self, node: str, name: str, *argv: str) -> ManagedProcess:
        p = ManagedProcess(name, list(argv), self.run_dir, netns=self.ns[node]).start()
        self.procs.append(p)
        return p

    def _broker(self, engine_id: str) -> None:
        d = self.broker_dir
        d.mkdir(parents=True, exist_ok=True)
        self.pki = make_pki(d / "pki", cn=MGMT_HOST_IP)
        self.passwords = {"manager": uuid.uuid4().hex, engine_id: uuid.uuid4().hex}
        pw = d / "passwd"
        pw.write_text("")
        for user, secret in self.passwords.items():
            sh("mosquitto_passwd", "-b", str(pw), user, secret)
        conf = d / "mosquitto.conf"
        conf.write_text(f"""\
per_listener_settings false
allow_anonymous false
password_file {pw}
persistence false
max_queued_messages 100000
log_dest stderr
log_type error
log_type warning
log_type notice
listener {MQTT_PORT} {MGMT_HOST_IP}
cafile {self.pki['ca']}
certfile {self.pki['cert']}
keyfile {self.pki['key']}
tls_version tlsv1.2
listener 0 {self.sock}
""")
        for p in [d, *d.rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        os.chown(d, pwd.getpwnam("mosquitto").pw_uid, -1)   # it drops to that user, then binds its socket
        # the mgmt address exists only once the appliance's tap is in the namespace: put it on lo
        # now so the listener can bind (moved to the tap when it arrives; the bound socket stays)
        self.run("mgmt", "ip", "addr", "add", f"{MGMT_HOST_IP}/32", "dev", "lo")
        self.mosquitto = self.popen("mgmt", "mosquitto", "mosquitto", "-c", str(conf))
        wait(lambda: self.sock.exists(), 15, "mosquitto's socket", self.mosquitto)
        os.chmod(self.sock, 0o666)

    def _manager(self) -> None:
        cfg = {
            "manager_id": "manager",
            "mqtt": {"transport": "unix", "path": str(self.sock), "username": "manager",
                     "password": self.passwords["manager"]},
            "influx": {"url": self.influx.url, "database": "vigil", "flush_interval": 0.5},
            "state_dir": str(self.run_dir / "manager"),
            "control_socket": str(self.run_dir / "manager.sock"),
            "policy": {"public_key_file": str(self.run_dir / "manager-signing.pub")},
            "log": {"level": "INFO"},
        }
        path = self.run_dir / "manager.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        vigil_manager = str(Path(os.sys.executable).parent / "vigil-manager")
        self.manager = ManagedProcess("manager", [vigil_manager, "-c", str(path)], self.run_dir).start()
        self.procs.append(self.manager)
        wait(lambda: (self.run_dir / "manager-signing.pub").exists() and (self.run_dir / "manager.sock").exists(),
             30, "the manager's signing key and control socket", self.manager)

    def vigilctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        ctl = str(Path(os.sys.executable).parent / "vigilctl")
        return sh(ctl, "--socket", str(self.run_dir / "manager.sock"), *args, check=check, timeout=30)

    def close(self) -> None:
        for p in reversed(self.procs):
            try:
                p.stop(5)
            except Exception:  # noqa: BLE001 — teardown goes on
                pass
        if self.influx:
            self.influx.stop()
        for ns in self.ns.values():
            subprocess.run(["ip", "netns", "pids", ns], capture_output=True)
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), 9)
                except (OSError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


class Appliance:
    """One QEMU run of the ISO: ``boot()``, ``console()``, ``wait_console()``, ``kill()``. A reboot
    inside the VM resets it in place (same taps, the serial log goes on)."""

    NICS = (("m", "mgmt", "52:54:00:12:00:01"), ("c", "client", "52:54:00:12:00:02"),
            ("s", "server", "52:54:00:12:00:03"))

    def __init__(self, site: Site, iso: Path, run_dir: Path, config: Path | None, state: Path | None,
                 kernel_args: str | None = None):
        self.site, self.iso, self.run_dir = site, iso, run_dir
        self.config, self.state = config, state
        # extra kernel command line words: the ISO's kernel and initrd are booted directly with the
        # boot menu's own line plus these (otherwise the firmware and the ISO's boot loader boot it)
        self.kernel_args = kernel_args
        self.proc: subprocess.Popen | None = None
        self.serial = run_dir / "serial.log"
        self.boots = 0
        self.started = 0.0
        self.taps = {node: f"vi{site.id}{k}" for k, node, _ in self.NICS}

    def boot(self) -> "Appliance":
        self.boots += 1
        self.serial = self.run_dir / f"serial-{self.boots}.log"
        # one vCPU (the host is shared; two TCG threads only compete), RDRAND and a virtio RNG:
        # without entropy the early boot waits for the random pool. Not "-cpu max": its ERMS makes
        # the kernel clear pages with "rep stosb", which TCG runs so slowly that the guest locks up
        argv = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "qemu64,+rdrand", "-m", "1024", "-smp", "1",
                "-no-user-config", "-nodefaults", "-display", "none", "-vga", "none",
                "-device", "virtio-rng-pci",
                "-chardev", f"file,id=s0,path={self.serial}", "-serial", "chardev:s0",
                # the iso-hybrid image as a disk (a USB stick's view of it): virtio reads the
                # squashfs much faster under emulation than an IDE CD-ROM does
                "-drive", f"file={self.iso},format=raw,readonly=on,if=none,id=boot",
                # (a kernel given to QEMU boots first: bootindex 0 is its own then)
                "-device", "virtio-blk-pci,drive=boot" + (",bootindex=0" if self.kernel_args is None else "")]
        if self.kernel_args is not None:
            kernel, initrd, append = iso_boot_files(self.iso, self.run_dir / "boot")
            argv += ["-kernel", str(kernel), "-initrd", str(initrd), "-append", f"{append} {self.kernel_args}"]
        if self.config:
            argv += ["-drive", f"file={self.config},format=raw,if=virtio,readonly=on"]
        if self.state:
            argv += ["-drive", f"file={self.state},format=raw,if=virtio"]
        for k, node, mac in self.NICS:
            argv += ["-netdev", f"tap,id={k},ifname={self.taps[node]},script=no,downscript=no",
                     "-device", f"virtio-net-pci,netdev={k},mac={mac}"]
        log = open(self.run_dir / f"qemu-{self.boots}.log", "wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        log.close()
        (self.run_dir / "pids").mkdir(exist_ok=True)
        (self.run_dir / "pids" / "qemu.pid").write_text(str(self.proc.pid))
        wait(lambda: all(Path("/sys/class/net", t).exists() for t in self.taps.values()), 30, "QEMU's taps",
             proc=self.proc)
        addrs = {"client": f"{CLIENT_IP}/24", "server": f"{SERVER_IP}/24", "mgmt": f"{MGMT_HOST_IP}/24"}
        for node, tap in self.taps.items():
            sh("ip", "link", "set", tap, "netns", self.site.ns[node])
            self.site.run(node, "sysctl", "-qw", f"net.ipv6.conf.{tap}.accept_ra=0")
            if node == "mgmt":
                self.site.run(node, "ip", "addr", "del", f"{MGMT_HOST_IP}/32", "dev", "lo", check=False)
            self.site.run(node, "ip", "addr", "add", addrs[node], "dev", tap)
            self.site.run(node, "ip", "link", "set", tap, "up")
        return self

    def dhcp_server(self, first: str, last: str) -> Path:
        """dnsmasq (DHCP only, no DNS) on the management tap; returns its lease file."""
        leases = self.run_dir / "dhcp.leases"
        self.site.popen("mgmt", "dnsmasq", "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0",
                        f"--interface={self.taps['mgmt']}", "--bind-interfaces", "--user=root", "--group=root",
                        f"--dhcp-range={first},{last},255.255.255.0,1h", f"--dhcp-leasefile={leases}",
                        "--dhcp-authoritative", "--log-dhcp", f"--pid-file={self.run_dir / 'dnsmasq.pid'}")
        return leases

    def console(self) -> str:
        try:
            return self.serial.read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_console(self, pattern: str, timeout: float = QEMU_TIMEOUT, since: int = 0) -> re.Match:
        """Wait for pattern on the serial console (after offset ``since``, e.g. a reboot's mark)."""
        rx = re.compile(pattern)
        found: list[re.Match] = []

        def seen() -> bool:
            m = rx.search(self.console(), since)
            if m:
                found.append(m)
            return bool(m)
        wait(seen, timeout, f"{pattern!r} on the serial console", proc=self.proc,
             tail=lambda: self.console()[-4000:])
        return found[0]

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(10)


def wait(pred, timeout: float, what: str, proc=None, tail=None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return
        exited = proc.poll() is not None if isinstance(proc, subprocess.Popen) else (proc is not None and not proc.alive())
        if exited:
            text = proc.log_text()[-3000:] if isinstance(proc, ManagedProcess) else ""
            raise RuntimeError(f"waiting for {what}: the process exited\n{text}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f}s" + (f"\n--- tail:\n{tail()}" if tail else ""))
        time.sleep(0.5)
