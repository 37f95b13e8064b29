"""The lab, installed as ``atomwatch.lab``: the libvirt test bed and the CoreDNS simulator.

The libvirt test bed (``atomwatch lab``):

- :mod:`atomwatch.lab.paths` — the work directory and the fixed names of what the lab creates (``awlab-*``);
- :mod:`atomwatch.lab.build` — the guest image from Debian packages (kernel .deb, busybox, qemu-ga, virtio modules);
- :mod:`atomwatch.lab.network` — a bridge with no host address and a traffic target in a network namespace,
  serving :mod:`atomwatch.lab.target_server`;
- :mod:`atomwatch.lab.domains` — libvirt domains (KVM/TCG probe, define, boot, destroy) and the guest agent;
- :mod:`atomwatch.lab.testbed` — ``up`` / ``down`` / ``status`` of the whole bed;
- :mod:`atomwatch.lab.workloads` — guest programs started and stopped through the guest agent;
- :mod:`atomwatch.lab.scenarios`, :mod:`atomwatch.lab.driver`, :mod:`atomwatch.lab.record` — named scenarios, their schedule on the
  live guests, and labelled recordings;
- :mod:`atomwatch.lab.private_guest` — one network-less guest under its own name (``awintro-*``) for the
  introspection tests and benchmark, safe from ``lab down``;
- ``lab/files/`` — the guest-side scripts (``init``, ``labctl`` and the workloads ``normal``,
  ``cryptominer``, ``ddos-bot``, ``leaker``, ``exfil``).

The CoreDNS simulator: :mod:`atomwatch.lab.coredns_sim` (``atomwatch coredns-sim``).

It may import the core, ``atomwatch.introspection`` and ``atomwatch.plugins``; only the command
line imports it.
"""
