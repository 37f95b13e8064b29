"""``atomwatch lab build``: assemble the guest image from Debian packages.

The guest is a kernel (``vmlinuz`` from a Debian ``linux-image-*.deb``) and a busybox initramfs
holding: busybox-static, ``qemu-ga`` with the shared libraries ``ldd`` lists, the virtio modules
of that kernel (loaded by ``/init`` with ``insmod`` in :data:`MODULE_ORDER`), a ``/sbin/shutdown``
for the agent's guest-shutdown, and the workload programs of ``lab/files/`` in ``/usr/local/bin``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .paths import FILES

log = logging.getLogger(__name__)

#: load order that works with busybox insmod (dependencies first)
MODULE_ORDER = [
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_console",
    "failover",
    "net_failover",
    "virtio_net",
    "virtio_blk",
    "virtio_balloon",
    "virtio-rng",
]
#: the workload programs copied to /usr/local/bin (their file names are the process names)
WORKLOADS = ["cryptominer", "ddos-bot", "leaker", "exfil", "normal"]
#: the guest-side helper the host calls through the guest agent
HELPERS = ["labctl"]
BUSYBOX = "/bin/busybox"
QEMU_GA = "/usr/sbin/qemu-ga"


class BuildError(RuntimeError):
    """The guest image cannot be built; the text says which input is missing or wrong."""


@dataclass
class Image:
    kernel: Path
    initrd: Path
    kernel_release: str
    info: dict

    @classmethod
    def load(cls, out: Path) -> Image:
        meta = out / "image.json"
        if not meta.exists():
            raise BuildError(f"{out}: no guest image here; run `atomwatch lab build --out {out}` first")
        info = json.loads(meta.read_text())
        return cls(out / "vmlinuz", out / "initrd.img", info["kernel_release"], info)


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)
    except FileNotFoundError:
        raise BuildError(f"{cmd[0]}: not installed (run .ci/lab-setup.sh or apt-get install it)") from None
    except subprocess.CalledProcessError as e:
        raise BuildError(f"{' '.join(cmd)} failed: {e.stderr.strip()[:500]}") from None


def download_kernel_deb(dest: Path) -> Path:
    """``apt-get download`` the current Debian cloud kernel into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    _run(["apt-get", "download", "linux-image-cloud-amd64"], cwd=dest)
    meta = next(dest.glob("linux-image-cloud-amd64_*.deb"), None)
    if meta is None:
        raise BuildError("apt-get download linux-image-cloud-amd64 gave no .deb")
    depends = _run(["dpkg-deb", "-f", str(meta), "Depends"]).stdout
    real = next((d.strip().split()[0] for d in depends.split(",") if d.strip().startswith("linux-image-6")), None)
    if real is None:
        raise BuildError(f"{meta}: cannot find the real kernel package in Depends: {depends!r}")
    _run(["apt-get", "download", real], cwd=dest)
    deb = next(dest.glob(f"{real}_*.deb"), None)
    if deb is None:
        raise BuildError(f"apt-get download {real} gave no .deb")
    return deb


def _ldd_libs(binary: str) -> list[Path]:
    out = _run(["ldd", binary]).stdout
    libs: list[Path] = []
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts:
            target = parts[parts.index("=>") + 1]
            if target.startswith("/"):
                libs.append(Path(target))
        elif parts and parts[0].startswith("/"):
            libs.append(Path(parts[0]))  # the dynamic loader
    return libs


def _copy_into(root: Path, src: Path, dest: str | None = None, mode: int | None = None) -> None:
    target = root / (dest or str(src)).lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src.resolve(), target)
    if mode is not None:
        target.chmod(mode)


def _cpio_gz(root: Path, out: Path) -> None:
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    listing = "\n".join(["."] + files) + "\n"
    proc = subprocess.run(
        ["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"],
        input=listing.encode(),
        cwd=root,
        capture_output=True,
    )
    if proc.returncode != 0:
        raise BuildError(f"cpio failed: {proc.stderr.decode(errors='replace')[:500]}")
    with gzip.open(out, "wb", compresslevel=6) as fh:
        fh.write(proc.stdout)


def build(kernel_deb: Path | None, out: Path) -> Image:
    """Build ``vmlinuz`` + ``initrd.img`` into ``out`` and return the image; idempotent (rebuilds)."""
    out.mkdir(parents=True, exist_ok=True)
    for tool, pkg in ((BUSYBOX, "busybox-static"), (QEMU_GA, "qemu-guest-agent")):
        if not Path(tool).exists():
            raise BuildError(f"{tool}: missing (apt-get install {pkg}, or run .ci/lab-setup.sh)")
    if shutil.which("cpio") is None:
        raise BuildError("cpio: not installed (apt-get install cpio)")
    with tempfile.TemporaryDirectory(prefix="atomwatch-lab-build-") as tmp:
        tmpd = Path(tmp)
        if kernel_deb is None:
            log.info("no --kernel-deb: downloading the Debian cloud kernel with apt-get")
            kernel_deb = download_kernel_deb(tmpd / "debs")
        kernel_deb = Path(kernel_deb)
        if not kernel_deb.is_file():
            raise BuildError(f"--kernel-deb {kernel_deb}: no such file")
        kroot = tmpd / "kernel"
        _run(["dpkg-deb", "-x", str(kernel_deb), str(kroot)])
        vmlinuz = sorted((kroot / "boot").glob("vmlinuz-*"))
        if not vmlinuz:
            raise BuildError(f"--kernel-deb {kernel_deb}: holds no /boot/vmlinuz-* (not a linux-image package?)")
        release = vmlinuz[0].name.removeprefix("vmlinuz-")
        moddir = kroot / "lib" / "modules" / release
        found: dict[str, Path] = {}
        for ko in moddir.rglob("*.ko*"):
            found[ko.name.split(".ko")[0]] = ko
        missing = [m for m in MODULE_ORDER if m not in found]
        if missing:
            raise BuildError(f"--kernel-deb {kernel_deb}: modules {missing} not found under {moddir}")

        root = tmpd / "root"
        for d in (
            "bin",
            "sbin",
            "usr/bin",
            "usr/sbin",
            "usr/local/bin",
            "proc",
            "sys",
            "dev",
            "tmp",
            "run",
            "etc/lab",
            "lib/modules/lab",
            "var",
        ):
            (root / d).mkdir(parents=True, exist_ok=True)
        _copy_into(root, Path(BUSYBOX), "/bin/busybox", 0o755)
        (root / "bin" / "sh").symlink_to("busybox")
        _copy_into(root, Path(QEMU_GA), "/usr/sbin/qemu-ga", 0o755)
        libs = _ldd_libs(QEMU_GA)
        for lib in libs:
            _copy_into(root, lib)
        for name in MODULE_ORDER:
            ko = found[name]
            if ko.suffix == ".xz":
                data = subprocess.run(["xz", "-dc", str(ko)], check=True, capture_output=True).stdout
                (root / "lib/modules/lab" / f"{name}.ko").write_bytes(data)
            else:
                _copy_into(root, ko, f"/lib/modules/lab/{name}.ko")
        (root / "etc/lab/modules").write_text("\n".join(MODULE_ORDER) + "\n")
        _copy_into(root, FILES / "init", "/init", 0o755)
        _copy_into(root, FILES / "shutdown", "/sbin/shutdown", 0o755)
        for w in WORKLOADS + HELPERS:
            _copy_into(root, FILES / w, f"/usr/local/bin/{w}", 0o755)
        (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        (root / "etc/group").write_text("root:x:0:\n")

        shutil.copy2(vmlinuz[0], out / "vmlinuz")
        _cpio_gz(root, out / "initrd.img")
    digest = hashlib.sha256((out / "initrd.img").read_bytes()).hexdigest()
    info = {
        "kernel_deb": str(kernel_deb),
        "kernel_release": release,
        "modules": MODULE_ORDER,
        "workloads": WORKLOADS,
        "qemu_ga_libs": [str(p) for p in libs],
        "initrd_sha256": digest,
    }
    (out / "image.json").write_text(json.dumps(info, indent=2) + "\n")
    log.info("built guest image %s (kernel %s) in %s", digest[:12], release, out)
    return Image(out / "vmlinuz", out / "initrd.img", release, info)
