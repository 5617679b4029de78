"""Frame codec speed: the msgspec messages against the hand-written framework they replaced, in the same run.

    python benchmarks/codec.py                      # baseline: the last commit before the msgspec messages
    python benchmarks/codec.py --baseline <rev>     # any revision that still has the dataclass messages

The baseline is the old ``protocol/{codec,fields,messages}.py`` read from git at ``--baseline`` and loaded
under another name, so both implementations run in one process on the same frames. Rows:

- ``update encode`` / ``update decode``: one round's Update frame (a packed parameter tree of the given size
  as its payload), microseconds per frame, best of 5 repeats;
- ``run_event decode``: a small analyst-bound frame with a nested map (the string-cleaning path);
- ``bomb ...``: 8 MiB of empty arrays inside a ``start_run`` frame, refused with ``frame_too_large``: as 40
  lists of 200,000 (each under any per-list limit; the adversarial test's frame), and as two lists of 2^17
  (each list under the item bound, the pair over it), milliseconds until the refusal.

"ratio" is old / new (above 1: the new code is faster).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import msgpack
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from fedjax_room.errors import FrameTooLargeError  # noqa: E402
from fedjax_room.protocol import codec  # noqa: E402
from fedjax_room.protocol import messages as new  # noqa: E402

BASELINE = "6c392fc"  # the last commit with the dataclass messages and the hook-counting unpack


def _load_baseline(rev: str) -> types.ModuleType:
    """The old messages module (with its own codec and fields) from git, importable beside the new one."""
    mods: dict[str, types.ModuleType] = {}
    for name in ("codec", "fields", "messages"):
        src = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{rev}:fedjax_room/protocol/{name}.py"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        for dep in ("codec", "fields"):
            src = src.replace(f"fedjax_room.protocol.{dep} import", f"_baseline_{dep} import")
        mod = types.ModuleType(f"_baseline_{name}")
        sys.modules[mod.__name__] = mod
        exec(compile(src, f"{rev}:{name}.py", "exec"), mod.__dict__)
        mods[name] = mod
    return mods["messages"]


def _best_us(fn: Callable[[], object], number: int) -> float:
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t) / number)
    return best * 1e6


def _refusal_ms(decode: Callable[[bytes], object], frame: bytes) -> float:
    t = time.perf_counter()
    try:
        decode(frame)
    except FrameTooLargeError:
        return (time.perf_counter() - t) * 1e3
    raise AssertionError("the bomb was accepted")


def _update_fields(params: int) -> dict[str, object]:
    tree = {"dense_0": {"kernel": np.ones((params // 10, 10), np.float32), "bias": np.ones(10, np.float32)}}
    return dict(
        run_id="run-1",
        round=3,
        weight=400,
        payload=codec.pack_tree(tree),
        epsilon=0.5,
        ledger_epsilon=1.5,
        delta=1e-5,
        site_epsilon=None,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default=BASELINE, help="git revision of the old messages (default %(default)s)")
    args = parser.parse_args()
    old = _load_baseline(args.baseline)
    rows: list[tuple[str, str, float, float]] = []
    for params in (2_570, 1_000_010):
        fields = _update_fields(params)
        o, n = old.Update(**fields), new.Update(**fields)
        fo, fn = old.encode(o), new.encode(n)
        assert old.decode(fo) == o and new.decode(fn) == n
        number = 2000 if params < 10_000 else 50
        label = f"update, {params:,} params ({len(fn) / 1024:,.0f} KiB)"
        enc = (_best_us(lambda o=o: old.encode(o), number), _best_us(lambda n=n: new.encode(n), number))
        dec = (_best_us(lambda f=fo: old.decode(f), number), _best_us(lambda f=fn: new.decode(f), number))
        rows += [(label, "encode us", *enc), (label, "decode us", *dec)]
    data = {"round": 3, "sites": ["site-a", "site-b"], "accuracy": 0.9, "note": "ok\x1b[0m"}
    ev_old = old.encode(old.RunEvent(run_id="run-1", kind="round", data=data))
    ev_new = new.encode(new.RunEvent(run_id="run-1", kind="round", data=data))
    dec = (_best_us(lambda: old.decode(ev_old), 5000), _best_us(lambda: new.decode(ev_new), 5000))
    rows.append(("run_event, nested map", "decode us", *dec))
    spec = {f"k{i}": [[]] * 200_000 for i in range(40)}
    many = {"a": [[]] * (codec.MAX_DECODED_ITEMS // 2), "b": [[]] * (codec.MAX_DECODED_ITEMS // 2)}
    for what, body in (("40 x 200,000", spec), ("2 x 2^17", many)):
        frames = [
            msgpack.packb({"v": v, "t": "start_run", "req": 1, "config": {}, "spec": body})
            for v in (old.VERSION, new.VERSION)
        ]
        label = f"bomb {len(frames[1]) / 2**20:.1f} MiB, {what} empty arrays"
        rows.append((label, "refused ms", _refusal_ms(old.decode, frames[0]), _refusal_ms(new.decode, frames[1])))
    print(f"baseline {args.baseline} (dataclasses) vs this tree (msgspec), python {sys.version.split()[0]}")
    print(f"{'frame':<44} {'what':<11} {'old':>10} {'new':>10} {'ratio':>7}")
    for label, what, t_old, t_new in rows:
        print(f"{label:<44} {what:<11} {t_old:>10.1f} {t_new:>10.1f} {t_old / t_new:>7.1f}")


if __name__ == "__main__":
    main()
