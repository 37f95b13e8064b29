"""A private lab guest for the introspection tests and benchmark.

The lab's own tests destroy every domain named ``awlab-guest*`` (``atomwatch.lab.testbed.down``), so
introspection runs boot their guest under another name (``awintro-<tag>``), from a private copy of
the lab's built image, without a network interface (the guest agent needs none, nor does the
``cryptominer`` workload). TCG, 256 MiB, 1 vCPU: the size the issue's figures are quoted for.

Only tests and benchmarks use it; nothing the agent runs imports it.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from . import domains
from .build import BuildError, Image, build
from .paths import default_dir

#: the pinned guest kernel of the project's shared lab assets (beside the checkout)
KERNEL_DEB = (
    Path(os.environ.get("ATOMWATCH_SHARED") or Path(__file__).resolve().parents[2] / "shared")
    / "lab"
    / "linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.deb"
)

PREFIX = "awintro"


@dataclass
class IntroGuestSpec(domains.GuestSpec):
    """A lab guest under a name the lab's ``down`` never touches, with no network interface."""

    tag: str = "g1"

    @property
    def name(self) -> str:
        return f"{PREFIX}-{self.tag}"

    def xml(self, kernel: Path, initrd: Path) -> str:
        text = super().xml(kernel, initrd)
        return re.sub(r"\s*<interface type='bridge'>.*?</interface>", "", text, flags=re.DOTALL)


def boot_private_guest(
    workdir: Path,
    tag: str = "g1",
    memory_mib: int = 256,
    uri: str = domains.DEFAULT_URI,
    shared_memory: bool = False,
):
    """Copy the lab image into ``workdir`` and boot ``awintro-<tag>`` from it; returns (conn, dom).
    ``shared_memory``: back its RAM with a shared file, so it can be introspected live.

    Raises ``atomwatch.lab.domains.LabError`` (or ``atomwatch.lab.build.BuildError``) naming what is missing."""
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        image = Image.load(default_dir())
    except BuildError:  # nobody ran `atomwatch lab build` here (a fresh CI machine): build privately
        image = build(KERNEL_DEB if KERNEL_DEB.exists() else None, workdir / "image")
    kernel, initrd = workdir / "vmlinuz", workdir / "initrd.img"
    shutil.copyfile(image.kernel, kernel)
    shutil.copyfile(image.initrd, initrd)
    conn = domains.connect(uri)
    spec = IntroGuestSpec(
        index=1, workdir=workdir, domain_type="qemu", memory_mib=memory_mib, tag=tag, shared_memory=shared_memory
    )
    domains.destroy(conn, spec.name)
    dom = domains.boot(conn, spec, kernel, initrd)
    return conn, dom


def destroy_private_guest(conn, tag: str = "g1") -> None:
    domains.destroy(conn, f"{PREFIX}-{tag}")
