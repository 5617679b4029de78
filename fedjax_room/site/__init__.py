"""The data owner's agent: policy (:mod:`.policy`), privacy plan (:mod:`.plan`), ledger (:mod:`.ledger`),
the agent doing the work (:mod:`.agent`) and the process glue (:mod:`.runner`)."""

from fedjax_room.site.policy import Policy

__all__ = ["Policy"]
