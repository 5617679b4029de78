"""A simulated poisoning site, for tests, benchmarks and the demo: a :class:`~fedjax_room.site.agent.SiteAgent`
that plays one of :mod:`fedjax_room.robust.attacks`.

The trusted agent knows nothing of attacks: it has a two-method seam (``_local_data``, ``_outgoing``, identity
there) that :class:`AttackingAgent` overrides. Everything else — policy checks, DP training, the ledger, the
release store, secure aggregation — is the honest agent's, so an attacker is exactly as constrained as a real
malicious site running our code would be (it pays for its rounds and its update is encoded and masked like
any other).

As a process (the demo launches attacker sites this way)::

    python -m fedjax_room.sim.attacker --attack boost [--attack-options '{"factor": 10}'] \\
        --coordinator ws://127.0.0.1:8765 --key site-00.key --data site-00.npz --policy policy.toml

takes the same arguments as ``fedjax-room site`` plus ``--attack`` / ``--attack-options``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fedjax_room.data import Dataset
from fedjax_room.errors import ConfigError, FedRoomError
from fedjax_room.robust.attacks import Attack, get_attack
from fedjax_room.site.agent import SiteAgent

__all__ = ["AttackingAgent", "attacking_factory", "main"]

log = logging.getLogger("fedjax_room.sim")

Tree = Any


class AttackingAgent(SiteAgent):
    """A site agent whose training data and/or released update are poisoned by ``attack``.

    The PRNG keys are drawn from the round's secret training seed (``seed % 2**31`` for the data attack,
    ``(seed + 1) % 2**31`` for the update attack), so an attacker's run is reproducible like an honest one.
    """

    def __init__(self, *, attack: Attack, **kwargs: Any) -> None:
        if not isinstance(attack, Attack):
            raise ConfigError(f"attack must be a fedjax_room.robust.attacks.Attack, got {type(attack).__name__}")
        self.attack = attack
        super().__init__(**kwargs)

    def _local_data(self, data: Dataset, params: Tree, seed: int) -> Dataset:
        if self.attack.data is None:
            return data
        import jax

        return self.attack.data(data, params, jax.random.key(seed % 2**31))

    def _outgoing(self, delta: Tree, params: Tree, seed: int) -> Tree:
        if self.attack.update is None:
            return delta
        import jax

        poisoned = self.attack.update(delta, params, jax.random.key((seed + 1) % 2**31))
        log.warning("%s is a simulated attacker (%s): its update is poisoned", self.name, self.attack.name)
        return jax.tree.map(lambda x: np.asarray(x, np.float32), jax.device_get(poisoned))


def attacking_factory(name: str, options: dict[str, Any] | None = None) -> Callable[..., AttackingAgent]:
    """A ``SiteAgent``-like constructor (the ``agent_factory`` of :func:`fedjax_room.site.runner.build_agent`)
    building an :class:`AttackingAgent` that plays ``name`` with ``options`` (checked now: a typed
    :class:`~fedjax_room.errors.ConfigError` for an unknown attack or option)."""
    attack = get_attack(name, **dict(options or {}))

    def factory(**kwargs: Any) -> AttackingAgent:
        return AttackingAgent(attack=attack, **kwargs)

    return factory


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fedjax_room.sim.attacker --attack NAME [--attack-options JSON] <fedjax-room site arguments>``.

    Serves until SIGTERM/SIGINT like ``fedjax-room site`` (then leaves the process at once), or returns 2 with one
    line on stderr for a typed error (an unknown attack, a missing argument, a refused identity).
    """
    from fedjax_room.site.runner import add_site_arguments, run_site, site_kwargs

    parser = argparse.ArgumentParser(
        prog="python -m fedjax_room.sim.attacker",
        description="Run a simulated poisoning site (tests and demos only): the arguments of `fedjax-room site` "
        "plus the attack it plays.",
    )
    parser.add_argument("--attack", required=True, help="sign_flip | boost | label_flip | gaussian")
    parser.add_argument("--attack-options", default="{}", help='the attack\'s options as JSON, e.g. {"factor": 10}')
    add_site_arguments(parser)
    args = parser.parse_args(argv)
    try:
        try:
            options = json.loads(args.attack_options)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--attack-options must be a JSON object: {exc}") from None
        if not isinstance(options, dict):
            raise ConfigError("--attack-options must be a JSON object")
        factory = attacking_factory(args.attack, options)
        kwargs = site_kwargs(args)
    except FedRoomError as exc:
        print(f"fedjax_room.sim.attacker: error: {exc.message}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("websockets").setLevel(logging.WARNING)
    from fedjax_room.sim.launch import serve_then_exit

    serve_then_exit(lambda: run_site(**kwargs, agent_factory=factory), "fedjax_room.sim.attacker")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
