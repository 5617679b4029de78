"""In-process federated simulation (no sockets): sites, attacks, defences, server optimiser. See :mod:`.harness`."""

from fedjax_room.sim.harness import RoundRecord, SimResult, SimSpec, run_simulation, site_name

__all__ = ["RoundRecord", "SimResult", "SimSpec", "run_simulation", "site_name"]
