"""``%room query`` and ``%%room query`` on a real embedded room (a coordinator and two site processes).

What a notebook user relies on: the magic returns the room's QueryResult and binds it, shows a plot whose error
bars are the result's own interval, the sites' ledgers grow, and hostile input (oversized bins, NaN bounds, an
unknown kind, an epsilon over the sites' policy) is one typed line that spends nothing and leaves the room
answering.
"""

from __future__ import annotations

import numpy as np
import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

pytestmark = pytest.mark.slow

EDGES = ",".join(f"{x:g}" for x in np.linspace(0, 1, 9))


@pytest.fixture(scope="module")
def shell():
    pytest.importorskip("fedjax_room.sim.demo")
    from IPython.testing.globalipapp import get_ipython

    ip = get_ipython()
    html = ip.display_formatter.formatters["text/html"]
    was, html.enabled = html.enabled, True  # as a notebook front end: the plots are HTML
    ip.run_line_magic("load_ext", "fedjax_room")
    with capture_output() as cap:
        result = ip.run_cell("%room demo --sites 2 --dataset digits")
    assert result.success, (result.error_in_exec, cap.stderr)
    yield ip
    ip.run_cell("%room stop")
    ip.run_line_magic("unload_ext", "fedjax_room")
    html.enabled = was


def cell(ip, source):
    with capture_output() as cap:
        result = ip.run_cell(source)
    return result, cap


def spent(ip) -> dict[str, float]:
    return {site: b.epsilon_spent for site, b in ip.user_ns["room"].budget().sites.items()}


def _plots(cap) -> list[str]:
    return [o.data["text/html"] for o in cap.outputs if "fjr-query-plot" in o.data.get("text/html", "")]


def test_the_line_magic_returns_and_plots_the_rooms_answer(shell):
    import fedjax_room.jupyter as jupyter
    from fedjax_room.analyst.queries import QueryResult

    before = spent(shell)
    result, cap = cell(shell, "%room query count_by_label epsilon=0.5 --as balance")
    assert result.success, cap.stderr
    answer = result.result
    assert isinstance(answer, QueryResult) and shell.user_ns["balance"] is answer
    assert answer.labels == [str(d) for d in range(10)] and set(answer.per_site) == {"site-a", "site-b"}
    # the truth: the demo made the data, so the test can count it
    from fedjax_room.data import load_dataset

    demo = jupyter._magics.embedded  # the operator's EmbeddedRoom: current_demo() gives the analyst no site's rows
    files = [demo.site_dir(name) / part for name in demo.site_names for part in ("train.npz", "heldout.npz")]
    labels = [load_dataset(f).y for f in files]  # a site answers over all its records
    truth = np.bincount(np.concatenate(labels), minlength=10)
    lo, hi = answer.ci(0.9999)
    assert ((lo <= truth) & (truth <= hi)).all(), (answer.total, truth)
    (plot,) = _plots(cap)
    assert plot.count('class="fjr-q-errorbar"') == 10 and 'class="fjr-query-heatmap"' in plot  # label x site
    after = spent(shell)
    assert all(after[s] > before[s] for s in before), (before, after)


def test_a_cell_runs_each_line_plain_and_secure(shell):
    result, cap = cell(
        shell,
        f"%%room query epsilon=0.5 --as looks\ncount_by_label secure\nhistogram pixel_3_4 bins={EDGES}\n",
    )
    assert result.success, cap.stderr
    secure, hist = shell.user_ns["looks"]
    assert secure.secure and secure.per_site == {} and secure.total.shape == (10,)
    assert hist.labels[0] == "[0, 0.125)" and set(hist.per_site) == {"site-a", "site-b"}
    plots = _plots(cap)
    assert len(plots) == 2 and "fjr-query-heatmap" not in plots[0]  # secure: the total only
    assert plots[1].count('class="fjr-q-bar"') == 8 and plots[1].count('class="fjr-q-errorbar"') == 8


@pytest.mark.parametrize(
    "line",
    [
        "histogram pixel_3_4 bins=" + ",".join(str(i) for i in range(400)) + " epsilon=1",  # 399 bins
        "mean pixel_3_4 bounds=nan,1 epsilon=1",
        "histogram pixel_3_4 bins=0,nan epsilon=1",
        "drop_table epsilon=1",
        "count_by_label epsilon=50",  # over the sites' max_epsilon
        "histogram no_such_pixel bins=0,1 epsilon=1",
    ],
    ids=["oversized-bins", "nan-bounds", "nan-bins", "unknown-kind", "over-policy", "unknown-feature"],
)
def test_hostile_queries_are_one_typed_line_and_spend_nothing(shell, line):
    before = spent(shell)
    result, cap = cell(shell, f"%room query {line}")
    assert isinstance(result.error_in_exec, UsageError), cap.stdout
    message = cap.stderr.strip()
    assert message.startswith("UsageError: ") and "\n" not in message and "Traceback" not in message, message
    assert "Error: " in message or "Violation" in message or "Refused" in message, message  # the typed reason
    assert spent(shell) == before
    result, cap = cell(shell, "%room query count epsilon=0.1")  # the room still answers
    assert result.success, cap.stderr
