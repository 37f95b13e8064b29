"""Lab guests as libvirt domains: choose KVM or TCG, define, boot, wait for the agent, destroy.

Each guest ``awlab-guestN`` boots the lab image directly (kernel + initramfs), has a qcow2 disk
(``vda``), a virtio NIC whose tap joins the lab bridge, a virtio-serial channel for the QEMU guest
agent, a balloon with a 2 s stats period and a console log file. Domains are persistent
(``defineXML``) so ``virsh list --all`` shows what the lab made; ``down`` destroys and undefines.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

from atomwatch.introspection import guest_agent

from .paths import BRIDGE, PREFIX, guest_ip, guest_name, tap_name

log = logging.getLogger(__name__)

DEFAULT_URI = "qemu:///system"
MEMORY_MIB = 256
DISK_MIB = 64
AGENT_TIMEOUT_TCG = 120.0
#: a KVM guest that cannot boot gives no error, it just never answers: give up after this
AGENT_TIMEOUT_KVM_PROBE = 45.0


class LabError(RuntimeError):
    """The lab cannot do what was asked; the text says what is missing and how to get it."""


def import_libvirt():
    try:
        import libvirt  # type: ignore[import-not-found]
    except ImportError:
        raise LabError("the libvirt Python module is missing: pip install libvirt-python (needs libvirt-dev)") from None
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


def connect(uri: str = DEFAULT_URI):
    libvirt = import_libvirt()
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as e:
        raise LabError(
            f"cannot connect to libvirt at {uri}: {e.get_error_message()} "
            "(is libvirtd running? .ci/lab-setup.sh installs and starts it)"
        ) from None


def qemu_binary() -> str:
    for b in ("/usr/bin/qemu-system-x86_64", shutil.which("qemu-system-x86_64") or ""):
        if b and Path(b).exists():
            return b
    raise LabError("qemu-system-x86_64 not found (apt-get install qemu-system-x86)")


def probe_domain_type() -> tuple[str, str]:
    """(``kvm`` or ``qemu``, why). Cheap checks only; :func:`boot` still verifies KVM really boots.

    KVM is a candidate only when ``/dev/kvm`` opens, the CPU flags show vmx/svm and the KVM module
    is not the nested PVM variant (which cannot boot a stock kernel).
    """
    if os.environ.get("ATOMWATCH_LAB_DOMAIN_TYPE") in ("kvm", "qemu"):
        return os.environ["ATOMWATCH_LAB_DOMAIN_TYPE"], "forced by ATOMWATCH_LAB_DOMAIN_TYPE"
    if not Path("/dev/kvm").exists():
        return "qemu", "no /dev/kvm"
    if Path("/sys/module/kvm_pvm").exists():
        return "qemu", "/dev/kvm is the nested PVM device (kvm_pvm), which cannot boot a stock kernel"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    if not re.search(r"\b(vmx|svm)\b", flags):
        return "qemu", "the CPU shows no vmx/svm flag"
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
        os.close(fd)
    except OSError as e:
        return "qemu", f"/dev/kvm does not open ({e.strerror})"
    return "kvm", "vmx/svm and /dev/kvm available"


@dataclass
class GuestSpec:
    index: int
    workdir: Path
    domain_type: str = "qemu"
    memory_mib: int = MEMORY_MIB
    vcpus: int = 1
    #: back the guest's RAM with a shared file (libvirt's ``<memoryBacking>`` with a file source and
    #: shared access): the agent can then read it in place (live introspection) instead of dumping it
    shared_memory: bool = False

    @property
    def name(self) -> str:
        return guest_name(self.index)

    @property
    def ip(self) -> str:
        return guest_ip(self.index)

    @property
    def dir(self) -> Path:
        return self.workdir / "guests" / self.name

    @property
    def disk(self) -> Path:
        return self.dir / "disk.qcow2"

    @property
    def console_log(self) -> Path:
        return self.dir / "console.log"

    @property
    def mac(self) -> str:
        return f"52:54:00:77:00:{self.index + 10:02x}"

    def xml(self, kernel: Path, initrd: Path) -> str:
        cmdline = f"console=ttyS0 panic=-1 quiet mitigations=off atomwatch.ip={self.ip}/24 atomwatch.name={self.name}"
        e = lambda p: escape(str(p))  # noqa: E731
        backing = (
            "\n  <memoryBacking><source type='file'/><access mode='shared'/></memoryBacking>"
            if self.shared_memory
            else ""
        )
        return f"""<domain type='{self.domain_type}'>
  <name>{self.name}</name>
  <description>atomwatch lab guest {self.index}</description>
  <memory unit='MiB'>{self.memory_mib}</memory>{backing}
  <vcpu>{self.vcpus}</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{e(kernel)}</kernel>
    <initrd>{e(initrd)}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>{e(qemu_binary())}</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{e(self.disk)}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='bridge'>
      <mac address='{self.mac}'/>
      <source bridge='{BRIDGE}'/>
      <target dev='{tap_name(self.index)}'/>
      <model type='virtio'/>
    </interface>
    <serial type='file'>
      <source path='{e(self.console_log)}'/>
      <target port='0'/>
    </serial>
    <channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <memballoon model='virtio'>
      <stats period='2'/>
    </memballoon>
    <rng model='virtio'>
      <backend model='random'>/dev/urandom</backend>
    </rng>
  </devices>
</domain>
"""


def make_disk(spec: GuestSpec) -> None:
    spec.dir.mkdir(parents=True, exist_ok=True)
    if spec.disk.exists():
        return
    if shutil.which("qemu-img") is None:
        raise LabError("qemu-img not found (apt-get install qemu-utils)")
    proc = subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(spec.disk), f"{DISK_MIB}M"], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise LabError(f"qemu-img create {spec.disk}: {proc.stderr.strip()}")


# --------------------------------------------------------------------------- guest agent


class AgentError(LabError):
    """The guest agent did not answer or a guest command failed."""


def agent_command(dom, command: dict, timeout: int = 10) -> dict:
    """One guest-agent command (the project's own, from :mod:`atomwatch.introspection.guest_agent`)."""
    try:
        return guest_agent.agent_command(dom, command, timeout)
    except guest_agent.GuestAgentError as e:
        raise AgentError(str(e)) from None


def agent_ping(dom, timeout: int = 2) -> bool:
    try:
        agent_command(dom, {"execute": "guest-ping"}, timeout)
        return True
    except AgentError:
        return False


def wait_agent(dom, timeout: float) -> float:
    """Seconds until the guest agent answered; raise :class:`AgentError` after ``timeout``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if agent_ping(dom, 2):
            return time.monotonic() - t0
        time.sleep(0.5)
    raise AgentError(f"{dom.name()}: the guest agent did not answer within {timeout:.0f} s")


def guest_exec(dom, path: str, args: list[str], timeout: float = 20.0) -> tuple[int, str, str]:
    """Run ``path args`` in the guest and wait: (exit code, stdout, stderr)."""
    try:
        return guest_agent.exec_in_guest(dom, path, args, timeout)
    except guest_agent.GuestAgentError as e:
        raise AgentError(str(e)) from None


def sh(dom, script: str, timeout: float = 20.0) -> str:
    """Run a shell line in the guest; raise :class:`AgentError` on a non-zero exit."""
    code, out, err = guest_exec(dom, "/bin/sh", ["-c", script], timeout)
    if code != 0:
        raise AgentError(f"{dom.name()}: `{script}` exited {code}: {err.strip() or out.strip()}")
    return out


# --------------------------------------------------------------------------- domains


def lab_domains(conn) -> list:
    """Every libvirt domain the lab made (by name prefix), running or not."""
    return sorted((d for d in conn.listAllDomains(0) if d.name().startswith(f"{PREFIX}-guest")), key=lambda d: d.name())


def find(conn, name: str):
    libvirt = import_libvirt()
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError:
        return None


def destroy(conn, name: str, undefine: bool = True) -> bool:
    """Stop (and undefine) a domain; True when it existed."""
    libvirt = import_libvirt()
    dom = find(conn, name)
    if dom is None:
        return False
    try:
        if dom.isActive():
            dom.destroy()
    except libvirt.libvirtError as e:
        log.warning("%s: destroy: %s", name, e.get_error_message())
    if undefine:
        try:
            dom.undefine()
        except libvirt.libvirtError as e:
            log.warning("%s: undefine: %s", name, e.get_error_message())
    return True


def boot(conn, spec: GuestSpec, kernel: Path, initrd: Path, wait: bool = True):
    """Define and start the guest (if not running already) and wait until its agent answers."""
    libvirt = import_libvirt()
    make_disk(spec)
    dom = find(conn, spec.name)
    if dom is not None and dom.isActive():
        if wait:
            wait_agent(dom, AGENT_TIMEOUT_TCG)
        return dom
    if dom is not None:
        try:
            dom.undefine()
        except libvirt.libvirtError:
            pass
    spec.console_log.unlink(missing_ok=True)
    try:
        dom = conn.defineXML(spec.xml(kernel, initrd))
        dom.create()
    except libvirt.libvirtError as e:
        raise LabError(f"{spec.name}: cannot start the domain: {e.get_error_message()}") from None
    if wait:
        timeout = AGENT_TIMEOUT_KVM_PROBE if spec.domain_type == "kvm" else AGENT_TIMEOUT_TCG
        took = wait_agent(dom, timeout)
        log.info("%s (%s) answers the guest agent after %.1f s", spec.name, spec.domain_type, took)
    return dom


#: the scheduling priority of the guests' QEMU threads (see :func:`prioritize`)
GUEST_NICE = -10


def qemu_pid(name: str) -> int | None:
    for run in ("/run/libvirt/qemu", "/var/run/libvirt/qemu"):
        try:
            return int(Path(run, f"{name}.pid").read_text().strip())
        except (OSError, ValueError):
            continue
    return None


def prioritize(name: str, nice: int = GUEST_NICE) -> int:
    """Give every thread of a guest's QEMU process the nice value ``nice``; returns how many.

    The lab stands for VMs with reserved CPU: without cgroups (no systemd here, so no
    ``<cputune><shares>``) unrelated host load would otherwise leak into the guests' metrics.
    The QEMU process's scheduler autogroup (``/proc/PID/autogroup``) gets the same value.
    """
    pid = qemu_pid(name)
    if pid is None:
        return 0
    done = 0
    # With sched_autogroup on, CPU is shared between sessions first: QEMU runs in a session of its
    # own, so its autogroup needs the nice value as well as its threads.
    try:
        Path(f"/proc/{pid}/autogroup").write_text(f"{nice}\n")
    except OSError:
        pass
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            os.setpriority(os.PRIO_PROCESS, int(task.name), nice)
            done += 1
        except (OSError, ValueError):
            pass
    return done


def domain_type_of(dom) -> str:
    m = re.search(r"<domain type='(\w+)'", dom.XMLDesc(0))
    return m.group(1) if m else "?"
