"""The lab, installed as ``atomwatch.lab``: the libvirt test bed and the CoreDNS simulator.

The libvirt test bed (``atomwatch lab``):

- :mod:`.paths` — the work directory and the fixed names of what the lab creates (``awlab-*``);
- :mod:`.build` — the guest image from Debian packages (kernel .deb, busybox, qemu-ga, virtio modules);
- :mod:`.network` — a bridge with no host address and a traffic target in a network namespace,
  serving :mod:`.target_server`;
- :mod:`.domains` — libvirt domains (KVM/TCG probe, define, boot, destroy) and the guest agent;
- :mod:`.testbed` — ``up`` / ``down`` / ``status`` of the whole bed;
- :mod:`.workloads` — guest programs started and stopped through the guest agent;
- :mod:`.scenarios`, :mod:`.driver`, :mod:`.record` — named scenarios, their schedule on the
  live guests, and labelled recordings;
- :mod:`.private_guest` — one network-less guest under its own name (``awintro-*``) for the
  introspection tests and benchmark, safe from ``lab down``;
- ``lab/files/`` — the guest-side scripts (``init``, ``labctl`` and the workloads ``normal``,
  ``cryptominer``, ``ddos-bot``, ``leaker``, ``exfil``).

The CoreDNS simulator: :mod:`.coredns_sim` (``atomwatch coredns-sim``).

It may import the core, ``atomwatch.introspection`` and ``atomwatch.plugins``; only the command
line imports it.
"""
