"""The lab: the libvirt test bed and, later, the CoreDNS simulator.

The libvirt test bed (``atomwatch lab``):

- :mod:`lab.paths` — the work directory and the fixed names of what the lab creates (``awlab-*``);
- :mod:`lab.build` — the guest image from Debian packages (kernel .deb, busybox, qemu-ga, virtio modules);
- :mod:`lab.network` — a bridge with no host address and a traffic target in a network namespace,
  serving :mod:`lab.target_server`;
- :mod:`lab.domains` — libvirt domains (KVM/TCG probe, define, boot, destroy) and the guest agent;
- :mod:`lab.testbed` — ``up`` / ``down`` / ``status`` of the whole bed;
- :mod:`lab.workloads` — guest programs started and stopped through the guest agent;
- :mod:`lab.scenarios`, :mod:`lab.driver`, :mod:`lab.record` — named scenarios, their schedule on the
  live guests, and labelled recordings;
- :mod:`lab.private_guest` — one network-less guest under its own name (``awintro-*``) for the
  introspection tests and benchmark, safe from ``lab down``;
- ``lab/files/`` — the guest-side scripts (``init``, ``labctl`` and the workloads ``normal``,
  ``cryptominer``, ``ddos-bot``, ``leaker``, ``exfil``).

The CoreDNS simulator: :mod:`lab.coredns_sim` (``atomwatch coredns-sim``).
"""
