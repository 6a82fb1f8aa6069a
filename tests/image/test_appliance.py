"""The engine appliance ISO booted under QEMU (TCG), checked from outside as a user would.

scripts/build-image builds the ISO (cached on its inputs' hash under VIGIL_IMAGE_DIR). The VM gets
three NICs on taps in this test's namespaces (tests/image/vm.py): eth0 management (a namespace with
Mosquitto over TLS and, through its unix socket, a real vigil-manager on this host), eth1 and eth2
the bridge ports between ``client`` and ``server``. A FAT volume labelled VIGIL-CONFIG carries the
site configuration; an ext4 partition labelled ``persistence`` keeps /var/lib/vigil.

Each QEMU boot costs minutes of CPU under emulation, so each boot checks several things: the boot
without a volume also takes kernel command line settings and DHCP on the management NIC; the
configured boot also enables console login and, between its block and its reboot, upgrades the
agent with site.yml over SSH (a wheel of a higher version built from this tree); its reboot also
checks the machine id and the upgrade are kept.
"""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.image import vm
from tests.image.vm import APPLIANCE_IP, CLIENT_IP, MGMT_HOST_IP, SERVER_IP, Appliance, Site

pytestmark = [pytest.mark.image, pytest.mark.slow, pytest.mark.timeout(3600)]

ENGINE_ID = "img1"
RUN_ROOT = Path(os.environ.get("VIGIL_IMAGE_TEST_ROOT", "/run/vigil-image-test"))


@pytest.fixture(scope="module")
def iso() -> Path:
    t0 = time.monotonic()
    path = vm.build_iso()
    print(f"image: {path.name} ready after {time.monotonic() - t0:.0f}s")
    return path


@pytest.fixture
def run_dir():
    vm.sweep(RUN_ROOT)
    d = RUN_ROOT / uuid.uuid4().hex[:8]
    d.mkdir(parents=True, mode=0o755)
    os.chmod(RUN_ROOT, 0o755)
    yield d
    if os.environ.get("VIGIL_KEEP_IMAGE_LOGS"):
        shutil.copytree(d, Path(os.environ["VIGIL_KEEP_IMAGE_LOGS"]) / d.name, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("*.img", "*.sock"))
    shutil.rmtree(d, ignore_errors=True)


def curl_ok(site: Site, timeout: float = 2.0) -> bool:
    r = site.run("client", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", str(timeout),
                 f"http://{SERVER_IP}:8080/", check=False, timeout=timeout + 10)
    return r.returncode == 0 and r.stdout == "200"


def ping_ok(site: Site) -> bool:
    return site.run("client", "ping", "-c", "1", "-W", "1", SERVER_IP, check=False).returncode == 0


def serve(site: Site) -> None:
    site.popen("server", "http", "python3", "-m", "http.server", "8080", "--bind", SERVER_IP)
    site.popen("server", "iperf3", "iperf3", "-s", "-B", SERVER_IP)
    vm.wait(lambda: site.run("server", "ss", "-ltn", check=False).stdout.count(SERVER_IP) >= 2, 20,
            "the server's listeners")


def iperf(site: Site, seconds: int = 3) -> float:
    r = site.run("client", "iperf3", "-J", "-c", SERVER_IP, "-t", str(seconds), timeout=seconds + 60)
    return json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"]


def nothing_answers_on_the_bridge_side(site: Site, tap: str, addresses: tuple[str, ...] = (APPLIANCE_IP,)) -> None:
    """Neither the management address nor any other address of the appliance answers from the
    bridged segment: no ARP, no ICMP, and only the server answers IPv6's all-nodes ping."""
    site.run("client", "ip", "route", "replace", "192.168.123.0/24", "dev", tap)
    try:
        for ip in (*addresses, MGMT_HOST_IP):
            r = site.run("client", "arping", "-c", "2", "-w", "3", "-I", tap, ip, check=False)
            assert "reply from" not in r.stdout.lower() and "bytes from" not in r.stdout.lower(), r.stdout
            assert site.run("client", "ping", "-c", "2", "-W", "1", ip, check=False).returncode != 0
    finally:
        site.run("client", "ip", "route", "del", "192.168.123.0/24", check=False)
    r = site.run("client", "ping", "-6", "-c", "3", "-w", "5", f"ff02::1%{tap}", check=False)
    hosts = set()
    for node in ("client", "server"):     # the sender answers its own all-nodes ping too
        out = site.run(node, "ip", "-6", "-br", "addr", "show", "scope", "link").stdout.split()
        hosts |= {a.split("/")[0] for a in out if a.startswith("fe80")}
    responders = set(re.findall(r"from (fe80::[0-9a-f:]+)", r.stdout))
    assert responders and responders <= hosts, (responders, hosts, r.stdout)


def engines(site: Site) -> dict[str, dict]:
    r = site.vigilctl("--json", "engines", check=False)
    if r.returncode != 0:
        return {}
    return {e["engine"]: e for e in json.loads(r.stdout)}


def ssh(site: Site, key: Path, command: str) -> str:
    r = site.run("mgmt", "ssh", "-i", str(key), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                 "-o", f"UserKnownHostsFile={key.parent / 'known_hosts'}", "-o", "ConnectTimeout=20",
                 f"root@{APPLIANCE_IP}", command, timeout=120)
    return r.stdout


def host_key(site: Site) -> str:
    r = site.run("mgmt", "ssh-keyscan", "-t", "ed25519", "-T", "20", APPLIANCE_IP, check=False, timeout=60)
    return r.stdout.split()[-1] if r.stdout.split() else ""


def online(site: Site, generation_after: int | None = None):
    def check() -> bool:
        e = engines(site).get(ENGINE_ID)
        if not e or not e.get("online"):
            return False
        g = e.get("ruleset_generation")
        if g is None or g != e.get("published_generation"):
            return False
        return generation_after is None or g > generation_after
    return check


def bumped_source(dest: Path) -> str:
    """A copy of this tree's package whose version is one step above the image's; its version."""
    dest.mkdir(parents=True)
    shutil.copy2(vm.ROOT / "pyproject.toml", dest)
    shutil.copy2(vm.ROOT / "README.md", dest)
    shutil.copytree(vm.ROOT / "agents", dest / "agents",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"))
    pyproject, init = dest / "pyproject.toml", dest / "agents" / "vigil" / "__init__.py"
    version = re.search(r'^version = "([^"]+)"', pyproject.read_text(), re.M).group(1)
    assert re.search(rf'^__version__ = "{re.escape(version)}"', init.read_text(), re.M), "versions differ"
    bumped = f"{version}.1"
    pyproject.write_text(pyproject.read_text().replace(f'version = "{version}"', f'version = "{bumped}"', 1))
    init.write_text(init.read_text().replace(f'__version__ = "{version}"', f'__version__ = "{bumped}"', 1))
    return bumped


def upgrade_with_site_yml(site: Site, run_dir: Path, key: Path) -> tuple[str, float, str]:
    """ansible-playbook site.yml --limit appliance over SSH from the management network, as an
    operator would, with the operator key the volume authorised.  The wheelhouse is built first on
    this host (the management namespace has no route to a package index), so the role's own
    build-wheelhouse finds it current.  Returns the new version, the play's seconds and its output."""
    src, wheelhouse = run_dir / "upgrade-src", run_dir / "wheelhouse"
    version = bumped_source(src)
    python = sys.executable                       # ansible-playbook's own: the role's controller Python
    vm.sh(str(vm.ROOT / "roles/vigil_common/files/build-wheelhouse"), str(src), str(wheelhouse), python,
          timeout=600)
    inventory = run_dir / "inventory.yml"
    inventory.write_text(json.dumps({"all": {"children": {"vigil_engines": {"hosts": {"appliance": {
        "ansible_host": APPLIANCE_IP, "ansible_user": "root", "ansible_python_interpreter": "/usr/bin/python3",
        "ansible_ssh_private_key_file": str(key),
        "ansible_ssh_common_args": f"-o StrictHostKeyChecking=no -o UserKnownHostsFile={key.parent / 'known_hosts'}",
    }}}}}}))
    env = {"VIGIL_SOURCE_DIR": str(src), "VIGIL_WHEELHOUSE": str(wheelhouse),
           "ANSIBLE_CONFIG": str(vm.ROOT / "ansible.cfg"), "ANSIBLE_LOCAL_TEMP": str(run_dir / "ansible-tmp"),
           "ANSIBLE_SSH_CONTROL_PATH_DIR": str(run_dir / "ansible-cp"), "ANSIBLE_TIMEOUT": "60",
           "ANSIBLE_HOST_KEY_CHECKING": "False"}
    t0 = time.monotonic()
    r = site.run("mgmt", "env", *(f"{k}={v}" for k, v in env.items()),
                 str(Path(python).parent / "ansible-playbook"), "-i", str(inventory),
                 str(vm.ROOT / "site.yml"), "--limit", "appliance", check=False, timeout=1500)
    seconds = time.monotonic() - t0
    (run_dir / "logs").mkdir(exist_ok=True)
    (run_dir / "logs" / "site.yml.log").write_text(r.stdout + r.stderr)
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
    return version, seconds, r.stdout


def test_unconfigured_appliance_bridges_says_what_is_missing_and_takes_dhcp_and_kernel_settings(iso, run_dir):
    """No configuration volume. The ISO's kernel is booted with its boot menu's line plus two
    ``vigil.*`` settings (as an operator types them at the menu): those two are then not missing.
    The management NIC asks for an address by DHCP (the default) from a dnsmasq on the management
    network, and still nothing of the appliance answers from the bridged side."""
    site = Site(run_dir)
    appliance = None
    try:
        site.add_namespaces()
        appliance = Appliance(site, iso, run_dir, config=None, state=None,
                              kernel_args=f"vigil.engine_id=img0 vigil.manager={MGMT_HOST_IP}").boot()
        leases = appliance.dhcp_server("192.168.123.50", "192.168.123.60")
        serve(site)
        appliance.wait_console(r"vigil-appliance: READY unconfigured")
        console = appliance.console()
        for missing in ("configuration volume: no filesystem labelled VIGIL-CONFIG", "mqtt.password",
                        "manager-signing.pub", "mqtt-ca.crt"):
            assert re.search(rf"vigil-appliance: MISSING {re.escape(missing)}", console), missing
        # given on the kernel command line, so not missing (and no complaint about the words)
        for given in ("engine_id", "manager.host"):
            assert not re.search(rf"vigil-appliance: MISSING {re.escape(given)}", console), given
        assert "kernel command line" not in "".join(re.findall(r"vigil-appliance: ERROR.*", console))
        assert "vigil-appliance: bridge br0 forwarding between eth1 and eth2" in console
        # made in the initramfs already (forwarding long before systemd), then adopted unchanged
        assert "vigil-initramfs: bridge br0 forwarding between eth1 and eth2 (from the defaults" in console
        assert "made in the initramfs, adopted" in console and "corrected to the configuration" not in console
        assert "vigil-appliance: management NIC eth0: dhcp" in console

        # DHCP on the management NIC: dnsmasq leased an address to eth0's MAC, which answers there
        mgmt_mac = Appliance.NICS[0][2]
        lease: list[str] = []

        def leased() -> bool:
            for line in leases.read_text().splitlines() if leases.exists() else []:
                if mgmt_mac in line.lower():
                    lease[:] = line.split()
                    return True
            return False
        vm.wait(leased, 120, f"a DHCP lease for the management NIC ({mgmt_mac})")
        leased_ip = lease[2]
        print(f"image: management NIC leased {leased_ip} by DHCP")
        vm.wait(lambda: site.run("mgmt", "ping", "-c", "1", "-W", "1", leased_ip, check=False).returncode == 0,
                30, f"the appliance at its leased address {leased_ip}")

        vm.wait(lambda: curl_ok(site), 30, "client -> server through the unconfigured appliance")
        assert iperf(site, 2) > 1e6
        nothing_answers_on_the_bridge_side(site, appliance.taps["client"], (leased_ip,))
        # no console login, no engine (skipped, not crash-looping): the console shows no login prompt
        assert "login:" not in appliance.console()
    except BaseException:
        if appliance:
            print("--- console (tail)\n" + appliance.console()[-6000:])
            dnsmasq_log = run_dir / "logs" / "dnsmasq.log"
            if dnsmasq_log.exists():
                print("--- dnsmasq (tail)\n" + dnsmasq_log.read_text()[-2000:])
        raise
    finally:
        if appliance:
            appliance.kill()
        site.close()


def test_configured_appliance_enrols_enforces_and_keeps_state_across_a_reboot(iso, run_dir):
    site = Site(run_dir)
    appliance = None
    try:
        site.up(ENGINE_ID)
        key = run_dir / "operator"
        vm.sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
        # console login enabled by the volume, with a crypt(3) hash made here (never in the image)
        password_hash = vm.sh("openssl", "passwd", "-6", uuid.uuid4().hex).stdout.strip()
        settings = {
            "engine_id": ENGINE_ID,
            "management": {"interface": "eth0", "address": f"{APPLIANCE_IP}/24"},
            "manager": {"host": MGMT_HOST_IP, "port": vm.MQTT_PORT, "tls": True},
            "management_networks": ["192.168.123.0/24"],
            "engine": {"status_interval": 5.0, "flows": {"interval": 5.0}},
            "console_login": True,
            "console_password_hash": password_hash,
        }
        files = {"mqtt.password": site.passwords[ENGINE_ID].encode() + b"\n",
                 "manager-signing.pub": (run_dir / "manager-signing.pub").read_bytes(),
                 "mqtt-ca.crt": site.pki["ca"].read_bytes(),
                 "authorized_keys": key.with_suffix(".pub").read_bytes()}
        config = vm.make_config_volume(run_dir / "config.img", settings, files)
        state = vm.make_state_disk(run_dir / "state.img")
        appliance = Appliance(site, iso, run_dir, config=config, state=state).boot()
        serve(site)

        # 1. ready, forwarding, silent on the bridge side
        appliance.wait_console(rf"vigil-appliance: READY engine {ENGINE_ID}")
        ready_s = time.monotonic() - appliance.started
        vm.wait(lambda: curl_ok(site), 30, "client -> server through the appliance")
        forwarding_s = time.monotonic() - appliance.started
        print(f"image: boot 1 ready after {ready_s:.0f}s, forwarding after {forwarding_s:.0f}s")
        assert iperf(site) > 1e6
        nothing_answers_on_the_bridge_side(site, appliance.taps["client"])
        console = appliance.console()
        assert "made the SSH host key" in console
        # the initramfs read the volume (FAT, mounted there for a moment) and made the bridge
        assert "vigil-initramfs: bridge br0 forwarding between eth1 and eth2 (from the configuration volume" in console
        assert "vigil-appliance: console login enabled by the configuration" in console
        image_version = re.search(r"vigil-appliance: agent vigil (\S+) from the image \(/opt/vigil/venv\): "
                                  r"no upgrade installed", console).group(1)
        appliance.wait_console(r"\blogin: ", 120)                 # the serial getty's prompt

        # 2. online at the manager with the signed rule set it published
        vm.wait(online(site), 240, f"{ENGINE_ID} online at the manager with its rule set applied")
        first_key = host_key(site)
        assert first_key
        journal = ssh(site, key, "journalctl -u vigil-engine -o cat --no-pager")
        features = ast.literal_eval(re.search(r"kernel features: (\{.*\})", journal).group(1))
        # Debian's kernel in the VM: conntrack on the bridge itself (nf_conntrack_bridge), the
        # engine's bridge-conntrack flow source, which this machine's own kernel cannot run
        assert features["bridge_conntrack"] is True and features["flow_source"] == "bridge-conntrack", features
        # the only password is the one the volume gave, for root (console login); sshd takes keys only
        shadow = dict(line.split(":")[:2] for line in ssh(site, key, "cat /etc/shadow").splitlines() if ":" in line)
        assert shadow.pop("root") == password_hash
        assert set(shadow.values()) <= {"!", "!*", "*"}, shadow
        assert ssh(site, key, "systemctl is-active serial-getty@ttyS0.service").strip() == "active"
        # the machine id: made on this first boot, kept with the state (checked after the reboot)
        machine_id = ssh(site, key, "cat /etc/machine-id").strip()
        engine_yaml = ssh(site, key, "cat /etc/vigil/engine.yaml")
        assert re.fullmatch(r"[0-9a-f]{32}", machine_id), machine_id
        assert ssh(site, key, "readlink /etc/machine-id").strip() == "/var/lib/vigil/appliance/machine-id"

        # 3. a decision on the manager blocks the client's HTTP to the server within seconds; its
        #    other traffic (ICMP, iperf3) keeps flowing
        gen = engines(site)[ENGINE_ID]["ruleset_generation"]
        t0 = time.monotonic()
        site.vigilctl("decisions", "add", f"{CLIENT_IP}|{SERVER_IP}|tcp|8080", "-d", "1h",
                      "-r", "image test", "--engine", ENGINE_ID)
        vm.wait(lambda: not curl_ok(site, 1.0), 30, "the block through the appliance")
        block_s = time.monotonic() - t0
        print(f"image: decision to block in {block_s:.1f}s")
        assert block_s < 15
        assert ping_ok(site) and iperf(site, 2) > 1e6
        vm.wait(online(site, gen), 60, "the new generation applied")
        assert "10.123.0.1" in ssh(site, key, "nft list table bridge vigil")
        blocked_gen = engines(site)[ENGINE_ID]["ruleset_generation"]
        assert engines(site)[ENGINE_ID]["version"] == image_version

        # 4. the operator upgrades the agent: site.yml over SSH, limited to the appliance; the play
        #    ends only once the engine runs the new agent and reached the broker again
        new_version, upgrade_s, play = upgrade_with_site_yml(site, run_dir, key)
        print(f"image: site.yml upgraded the agent {image_version} -> {new_version} in {upgrade_s:.0f}s")
        assert "failed=0" in play and "changed=" in play
        vm.wait(lambda: engines(site).get(ENGINE_ID, {}).get("version") == new_version and online(site)(),
                120, f"{ENGINE_ID} online at the manager running {new_version}")
        after = engines(site)
        assert list(after) == [ENGINE_ID]                                  # the same identity
        assert after[ENGINE_ID]["ruleset_generation"] == blocked_gen      # the same rule set
        assert not curl_ok(site, 1.0) and ping_ok(site)                  # still blocked, still flowing
        assert iperf(site, 2) > 1e6
        assert host_key(site) == first_key
        assert ssh(site, key, "readlink /run/vigil/appliance/agent").strip() == "/var/lib/vigil/agent/venv"
        assert ssh(site, key, "cat /etc/vigil/engine.yaml") == engine_yaml     # the volume's, untouched
        assert "10.123.0.1" in ssh(site, key, "nft list table bridge vigil")

        # 5. the operator reboots it (over SSH; QEMU resets the same VM): same identity, the block
        #    back in the kernel before the engine reaches the broker
        mark = len(appliance.console())
        site.run("mgmt", "ssh", "-i", str(key), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                 "-o", f"UserKnownHostsFile={key.parent / 'known_hosts'}", f"root@{APPLIANCE_IP}",
                 "systemctl reboot", check=False, timeout=60)
        appliance.wait_console(r"reboot: Restarting system", 180, since=mark)
        rebooted = time.monotonic()
        appliance.wait_console(rf"vigil-appliance: READY engine {ENGINE_ID}", since=mark)
        ready2 = time.monotonic()
        vm.wait(lambda: ping_ok(site), 30, "forwarding after the reboot")
        print(f"image: boot 2 ready {ready2 - rebooted:.0f}s after the reset, "
              f"forwarding {time.monotonic() - ready2:.1f}s after the bridge came up")
        console2 = appliance.console()[mark:]
        assert "made the SSH host key" not in console2          # kept on the persistence partition
        assert (f"vigil-appliance: agent vigil {new_version} from the upgrade (/var/lib/vigil/agent/venv): "
                f"newer than the image's {image_version}") in console2
        vm.wait(online(site), 240, f"{ENGINE_ID} online again")
        assert host_key(site) == first_key
        assert ssh(site, key, "cat /etc/machine-id").strip() == machine_id
        assert not curl_ok(site, 1.0) and ping_ok(site)
        journal = ssh(site, key, "journalctl -b -u vigil-engine -o cat --no-pager")
        restored = journal.find("enforcement: restored generation")
        connected = journal.find("mqtt: connected")
        assert 0 <= restored < connected, journal[-3000:]
        assert list(engines(site)) == [ENGINE_ID]
        vm.wait(lambda: engines(site)[ENGINE_ID].get("version") == new_version, 30,
                f"the upgrade {new_version} still running after the reboot")
    except BaseException:
        if appliance:
            print("--- console (tail)\n" + appliance.console()[-8000:])
        if site.manager:
            print("--- manager (tail)\n" + site.manager.log_text()[-3000:])
        raise
    finally:
        if appliance:
            appliance.kill()
        site.close()
