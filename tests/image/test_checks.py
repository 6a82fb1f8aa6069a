"""The build-time checks (image/check-rootfs) on planted trees: a clean tree passes, and each planted
secret or missing component fails with a line naming it. scripts/build-image runs the same script on
the real chroot before `lb binary`, so a refused tree never becomes an ISO; checking planted trees
here costs a second instead of a second ten-minute build."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.image

ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT / "image" / "check-rootfs"

PRIVATE_PEM = ("-----BEGIN PRIVATE KEY-----\n" + "MC4CAQAwBQYDK2VwBCIEIP" + "A" * 40 + "\n"
               "-----END PRIVATE KEY-----\n")
OPENSSH = ("-----BEGIN OPENSSH PRIVATE KEY-----\n" + "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ" * 2 + "\n"
           "-----END OPENSSH PRIVATE KEY-----\n")


def clean_tree(root: Path) -> Path:
    files = {
        "etc/shadow": "root:*:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\nsshd:!:19000::::::\n",
        "etc/passwd": "root:x:0:0:root:/root:/bin/bash\n",
        "usr/sbin/nft": "", "usr/sbin/sshd": "", "usr/bin/ssh-keygen": "",
        "opt/vigil/venv/bin/vigil-engine": "", "opt/vigil/venv/bin/vigilctl": "",
        "opt/vigil/venv/lib/python3.11/site-packages/vigil/engine/appliance.py": "",
        "usr/lib/python3/dist-packages/nftables/__init__.py": "",
        "etc/systemd/system/vigil-engine.service": "", "etc/systemd/system/vigil-appliance.service": "",
        "etc/systemd/system/sysinit.target.wants/vigil-appliance.service": "",
        "etc/systemd/system/multi-user.target.wants/vigil-engine.service": "",
        "usr/lib/live/boot/9990-main.sh": "", "boot/vmlinuz-6.1.0-28-amd64": "",
        # the machine id: made on first boot, written through the link into the kept state
        "var/lib/vigil/appliance/machine-id": "",
        # a public certificate and code that names the PEM header are not private keys
        "etc/ssl/certs/ca.pem": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        "usr/lib/python3/dist-packages/x/serialization.py": 'HEADER = b"-----BEGIN PRIVATE KEY-----"\n',
        # the manual page of authorized_keys is not an authorized_keys file
        "usr/share/man/man5/authorized_keys.5.gz": "",
    }
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    # enablement links point to absolute paths, valid inside the image only
    for rel in ("etc/systemd/system/sysinit.target.wants/vigil-appliance.service",
                "etc/systemd/system/multi-user.target.wants/vigil-engine.service"):
        (root / rel).unlink()
        (root / rel).symlink_to("/etc/systemd/system/" + Path(rel).name)
    (root / "etc/machine-id").symlink_to("/var/lib/vigil/appliance/machine-id")
    return root


def check(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(CHECK), str(root)], capture_output=True, text=True, timeout=60)


def test_a_clean_tree_passes(tmp_path):
    r = check(clean_tree(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "check-rootfs: ok" in r.stderr


@pytest.mark.parametrize("rel,text,expect", [
    ("etc/shadow", "root:$y$j9T$abc$def:19000:0:99999:7:::\n", "/etc/shadow:1: root has a password hash"),
    ("etc/shadow", "root::19000:0:99999:7:::\n", "/etc/shadow:1: root has an empty password"),
    ("etc/shadow", "root:!$6$salt$hash:19000:0:99999:7:::\n", "root has a password hash"),
    ("etc/passwd", "root:$6$x$y:0:0:root:/root:/bin/bash\n", "/etc/passwd:1: root has a password field"),
    ("root/.ssh/authorized_keys", "ssh-ed25519 AAAA op@site\n", "/root/.ssh/authorized_keys: an authorized_keys file"),
    ("home/op/.ssh/authorized_keys2", "ssh-ed25519 AAAA op@site\n", "authorized_keys2: an authorized_keys file"),
    ("etc/ssh/ssh_host_ed25519_key", "x", "/etc/ssh/ssh_host_ed25519_key: an SSH host key"),
    ("etc/vigil/signing.key", PRIVATE_PEM, "/etc/vigil/signing.key: a private key (PRIVATE KEY)"),
    ("opt/vigil/wheels/leftover.txt", "junk\n" + OPENSSH, "leftover.txt: a private key (OPENSSH PRIVATE KEY)"),
])
def test_a_planted_secret_is_refused(tmp_path, rel, text, expect):
    root = clean_tree(tmp_path)
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    r = check(root)
    assert r.returncode == 1
    assert expect in r.stderr, r.stderr
    assert "1 problem(s): the image is refused" in r.stderr


@pytest.mark.parametrize("plain_file", [False, True])
def test_a_baked_machine_id_is_refused(tmp_path, plain_file):
    """Through the image's own link (never the build host's file of the same path) or as a file."""
    root = clean_tree(tmp_path)
    if plain_file:
        (root / "etc/machine-id").unlink()
        (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    else:
        (root / "var/lib/vigil/appliance/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    r = check(root)
    assert r.returncode == 1, r.stderr
    assert "/etc/machine-id: holds a machine id (01234567...)" in r.stderr, r.stderr
    assert "1 problem(s): the image is refused" in r.stderr


@pytest.mark.parametrize("rel,expect", [
    ("usr/sbin/nft", "missing: nft"),
    ("opt/vigil/venv/bin/vigil-engine", "missing: the agent's entry point vigil-engine"),
    ("etc/systemd/system/vigil-engine.service", "missing: the agent's unit"),
    ("etc/systemd/system/multi-user.target.wants/vigil-engine.service", "missing: the agent's unit enabled"),
    ("opt/vigil/venv/lib/python3.11/site-packages/vigil/engine/appliance.py", "missing: the first-boot step"),
    ("boot/vmlinuz-6.1.0-28-amd64", "missing: a kernel"),
])
def test_a_missing_component_is_refused(tmp_path, rel, expect):
    root = clean_tree(tmp_path)
    (root / rel).unlink()
    r = check(root)
    assert r.returncode == 1 and expect in r.stderr, r.stderr


def test_build_image_runs_the_checks_before_lb_binary():
    """The build script refuses to make an ISO from a tree the checks refuse (order in the script)."""
    text = (ROOT / "scripts" / "build-image").read_text()
    checks = text.index('image/check-rootfs" "$build/chroot" ||')
    assert checks < text.index("lb binary)") and "exit 1" in text[checks:checks + 120]
