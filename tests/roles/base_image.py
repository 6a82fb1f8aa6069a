"""The Molecule base image: Debian 12 minbase + systemd + python3 (+ python3-apt), by debootstrap.

Built once and cached by the hash of its recipe: the rootfs tarball under ``CACHE_DIR`` (kept
across runs and across podman resets) and the imported podman image
``localhost/vigil-molecule-base:<hash>`` (kept; never removed by the tests' clean-up).

    python tests/roles/base_image.py            # build if needed, print the image name
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CACHE_DIR = Path(os.environ.get("VIGIL_ROLES_CACHE", "/var/cache/vigil-tests/roles"))
CONTAINERS_CONF = Path(__file__).with_name("containers.conf")
IMAGE_REPO = "localhost/vigil-molecule-base"

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# python3-apt: the scenario runs its plays through Mitogen (roles/molecule/fleet/plugins/strategy),
# whose kept-open interpreter the apt module cannot respawn after installing python3-apt itself, as
# it does over SSH on an operator's fresh Debian. The roles' own packages stay out of the image.
INCLUDE = ["systemd", "systemd-sysv", "dbus", "python3", "python3-apt", "iproute2", "ca-certificates"]
# Run inside the rootfs after debootstrap: what a container with systemd as PID 1 needs.
FIXUP = r"""
set -e
cat > /etc/apt/sources.list <<APT
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
APT
# no hardware or login consoles in a container
for u in getty@tty1.service serial-getty@.service console-getty.service systemd-udevd.service \
         systemd-udev-trigger.service systemd-remount-fs.service sys-kernel-debug.mount \
         systemd-firstboot.service; do
  ln -sf /dev/null /etc/systemd/system/$u
done
echo 'Acquire::Languages "none";' > /etc/apt/apt.conf.d/99vigil-nolang
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
: > /etc/machine-id
"""


def recipe_hash() -> str:
    h = hashlib.sha256()
    for part in (SUITE, MIRROR, " ".join(INCLUDE), FIXUP, "minbase", "v1"):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:16]


def podman_env() -> dict:
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def image_exists(name: str) -> bool:
    return subprocess.run(["podman", "image", "exists", name], env=podman_env()).returncode == 0


def build_tarball(dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vigil-debootstrap-", dir=dest.parent) as tmp:
        root = Path(tmp) / "root"
        subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(INCLUDE)}",
                        SUITE, str(root), MIRROR], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["chroot", str(root), "/bin/sh", "-c", FIXUP], check=True)
        part = dest.with_suffix(".part")
        subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(part), "."], check=True)
        part.rename(dest)


def ensure_base_image() -> str:
    """Return the image name, building the rootfs and importing it only when not cached."""
    digest = recipe_hash()
    name = f"{IMAGE_REPO}:{digest}"
    if image_exists(name):
        return name
    tarball = CACHE_DIR / f"base-{SUITE}-{digest}.tar"
    if not tarball.exists():
        if shutil.which("debootstrap") is None:
            raise RuntimeError("debootstrap is not installed (scripts/setup roles)")
        build_tarball(tarball)
    with tarball.open("rb") as f:
        subprocess.run(["podman", "import", "--change", "CMD=/lib/systemd/systemd", "-", name],
                       stdin=f, check=True, env=podman_env(), stdout=subprocess.DEVNULL)
    return name


if __name__ == "__main__":
    print(ensure_base_image())
    sys.exit(0)
