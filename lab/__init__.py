"""The lab: the libvirt test bed and, later, the CoreDNS simulator.

The libvirt test bed builds a small guest from Debian packages (:mod:`lab.build`), boots guests
through libvirt (:mod:`lab.domains`) on a private bridge with a traffic target in a network
namespace (:mod:`lab.network`), drives workloads and attacks inside them through the QEMU guest
agent (:mod:`lab.workloads`), and records labelled traces from named scenarios
(:mod:`lab.scenarios`, :mod:`lab.record`). Guest-side scripts live in ``lab/files/``.

The CoreDNS simulator (``lab/coredns_sim.py``) is written separately.
"""
