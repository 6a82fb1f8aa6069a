"""Benchmark: the appliance image's build time (cold, warm, code change) and its boot to forwarding.

Build (scripts/build-image, each in a throw-away VIGIL_IMAGE_DIR unless --reuse):
- cold: an empty image directory (debootstrap, every package downloaded, lb chroot, role, lb binary);
- code change: the base chroot cached, the ISO not (what a change of agents/ or the role costs);
- warm: nothing changed (the ISO for the inputs' hash is reused).
Goal: cold <= 600 s. Baseline for the build figures: the cold build itself (ratios of warm and
code-change builds to it).

Boot (QEMU TCG, no configuration volume: the documented default ports bridge client and server):
- boot to forwarding: QEMU started -> the first ping from client to server through the appliance
  (the bridge is made in the initramfs, image/README.md: long before systemd and READY);
- baseline, measured in the same boot: QEMU started -> the kernel's first console line
  ("Linux version"), i.e. what firmware, boot loader and emulation cost before Linux runs at all.
Goal: boot to forwarding <= 120 s.
Where the boot time goes: each boot also prints when (seconds after QEMU started) the serial console
first showed each stage's line (PHASES), and the medians of the stages' lengths.

    sudo .venv/bin/python bench/image_build.py [--boots 2] [--skip-cold] [--reuse] [--iso PATH]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "agents"))
sys.path.insert(0, str(ROOT))


def build(image_dir: Path) -> tuple[float, Path]:
    env = dict(os.environ, VIGIL_IMAGE_DIR=str(image_dir))
    t0 = time.monotonic()
    r = subprocess.run([str(ROOT / "scripts" / "build-image")], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"build failed:\n{r.stderr[-4000:]}")
    return time.monotonic() - t0, Path(r.stdout.strip().splitlines()[-1])


# A boot's stages, each marked by the first console line that shows it was reached.
PHASES = [
    ("kernel", "Linux version"),                                   # firmware + boot loader before it
    ("initramfs", "Run /init as init process"),                    # the kernel's own start-up
    ("bridge up in the initramfs", "vigil-initramfs: bridge"),     # udev, NIC drivers, the bridge
    ("live medium mounted", 'Mounting "/run/live/medium/live/filesystem.squashfs"'),  # probing the disks
    ("initramfs done", "Running /scripts/init-bottom"),            # overlay, persistence lookup, fstab
    ("init started", "Not activating Mandatory Access Control"),   # run-init, switch to the root fs
    ("systemd", "Welcome to"),                                     # systemd's start before its first line
    ("bridge adopted", "vigil-appliance: bridge"),                 # early units, the appliance step
    ("READY", "vigil-appliance: READY"),
]


def phases_seen(console: str, seen: dict[str, float], now: float) -> None:
    for name, marker in PHASES:
        if name not in seen and marker in console:
            seen[name] = now


def boot_once(iso: Path) -> tuple[float, float, float, dict[str, float]]:
    from tests.image import vm
    run_dir = Path(tempfile.mkdtemp(prefix="vigil-bench-image."))
    site = vm.Site(run_dir)
    appliance = None
    try:
        site.add_namespaces()
        appliance = vm.Appliance(site, iso, run_dir, config=None, state=None).boot()
        t0 = appliance.started
        kernel = None
        seen: dict[str, float] = {}
        while True:
            now = time.monotonic()
            console = appliance.console()
            phases_seen(console, seen, now - t0)
            if kernel is None and "Linux version" in console:
                kernel = now - t0
            if site.run("client", "ping", "-c", "1", "-W", "1", vm.SERVER_IP, check=False).returncode == 0:
                forwarding = time.monotonic() - t0
                break
            if now - t0 > 600:
                sys.exit("no forwarding within 600 s:\n" + appliance.console()[-3000:])
        print(f"  forwarding {forwarding:.1f} s after QEMU started", flush=True)
        # the bridge is made in the initramfs: the later stages (systemd, the boot step adopting
        # the bridge, READY) come after forwarding; keep stamping them as they appear
        while "READY" not in seen:
            phases_seen(appliance.console(), seen, time.monotonic() - t0)
            if time.monotonic() - t0 > vm.QEMU_TIMEOUT:
                sys.exit("no READY line within the boot timeout:\n" + appliance.console()[-3000:])
            time.sleep(0.5)
        return kernel or float("nan"), forwarding, seen["READY"], seen
    finally:
        if appliance:
            appliance.kill()
        site.close()
        shutil.rmtree(run_dir, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--boots", type=int, default=2)
    ap.add_argument("--skip-cold", action="store_true", help="no cold build (it downloads every package)")
    ap.add_argument("--reuse", action="store_true", help="use VIGIL_IMAGE_DIR as it is (warm figures only)")
    ap.add_argument("--iso", type=Path, help="boot figures only, for this ISO (no build)")
    args = ap.parse_args()

    if args.iso:
        iso = args.iso
    elif args.reuse:
        image_dir = Path(os.environ.get("VIGIL_IMAGE_DIR", "/var/cache/vigil-image"))
        warm, iso = build(image_dir)
        print(f"build warm (nothing changed): {warm:.1f} s")
    else:
        image_dir = Path(tempfile.mkdtemp(prefix="vigil-bench-build.", dir="/var/tmp"))
        try:
            if args.skip_cold:
                src = Path(os.environ.get("VIGIL_IMAGE_DIR", "/var/cache/vigil-image"))
                subprocess.run(["cp", "-a", f"{src}/.", str(image_dir)], check=True)
                for iso_file in image_dir.glob("vigil-engine-*.iso"):
                    iso_file.unlink()
                cold = None
            else:
                cold, _ = build(image_dir)
                print(f"build cold: {cold:.0f} s (goal <= 600 s: {'met' if cold <= 600 else 'NOT met'})")
                for iso_file in image_dir.glob("vigil-engine-*.iso"):
                    iso_file.unlink()
            change, iso_tmp = build(image_dir)
            warm, _ = build(image_dir)
            iso = Path(tempfile.gettempdir()) / iso_tmp.name
            shutil.copy(iso_tmp, iso)
        finally:
            shutil.rmtree(image_dir, ignore_errors=True)
        base = f" = {change / cold:.2f} x cold" if cold else ""
        print(f"build after a code change (base chroot cached): {change:.0f} s{base}")
        print(f"build warm (nothing changed): {warm:.1f} s" + (f" = {warm / cold:.4f} x cold" if cold else ""))

    kernels, fwd, ready, stages = [], [], [], []
    try:
        for i in range(args.boots):
            k, f, r, seen = boot_once(iso)
            kernels.append(k), fwd.append(f), ready.append(r), stages.append(seen)
            load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
            print(f"boot {i + 1}: kernel's first line {k:.1f} s, READY {r:.1f} s, forwarding {f:.1f} s "
                  f"(host load after it: {load})")
            print("  stages reached (s after QEMU started): "
                  + ", ".join(f"{name} {seen[name]:.1f}" for name, _ in PHASES if name in seen))
    finally:
        if not args.reuse and not args.iso:
            iso.unlink(missing_ok=True)   # the copy taken out of the throw-away image directory
    k, f = statistics.median(kernels), statistics.median(fwd)
    print("where the boot time goes (median length of each stage, s):")
    prev = "QEMU start"
    for name, _ in PHASES:
        lengths = [s[name] - (s[prev] if prev in s else 0.0) for s in stages
                   if name in s and (prev == "QEMU start" or prev in s)]
        if lengths:
            print(f"  {prev} -> {name}: {statistics.median(lengths):.1f}")
        prev = name
    print(f"boot to forwarding (median of {args.boots}): {f:.1f} s; baseline (QEMU start to the kernel's "
          f"first console line): {k:.1f} s; ratio {f / k:.1f}; goal <= 120 s: {'met' if f <= 120 else 'NOT met'}")


if __name__ == "__main__":
    main()
