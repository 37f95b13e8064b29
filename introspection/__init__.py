"""Introspection (``atomwatch.introspection``): looking inside the one VM an alarm flagged, and stopping its guilty process.

Used on the agent's side (it runs where the memory is); imports only the core. What lives here, one module each:

* :mod:`.live` — a running guest's memory read in place when libvirt backs it with a shared file
  (found in the QEMU process's mappings), and the measured pause around consistent reads;
* :mod:`.acquire` — otherwise, a memory-only ELF core dump through libvirt into a private directory,
  the domain's state checked (and resumed) afterwards;
* :mod:`.volatility` and :mod:`.worker` — Volatility 3 as a library in a worker subprocess with a
  wall-clock and memory limit, several plugins over one loaded image, rows as plain dicts;
* :mod:`.warm` — for live reads, one worker per guest kept with its context loaded between
  introspections (bounded in number, dropped when idle or when the guest rebooted);
* :mod:`.plugins_choice` — blamed metrics → Volatility plugins;
* :mod:`.suspects` — ranking processes against a healthy baseline of the same VM, with evidence;
* :mod:`.pipeline` — one introspection end to end, and the per-VM baseline store;
* :mod:`.btf`, :mod:`.kallsyms`, :mod:`.isf_from_btf`, :mod:`.symbols` — Volatility symbol tables
  built from a kernel's BTF and symbol addresses (package, vmlinux or running guest), kept by banner;
* :mod:`.guest_agent` — list processes and terminate one through the QEMU guest agent, refusing
  when PID, name or start time no longer match.

What does not live here: the protocol commands (``atomwatch.plugins.introspection_commands``),
the controller-side orchestration (``atomwatch.plugins.orchestrate``), detectors and alarms.
"""
