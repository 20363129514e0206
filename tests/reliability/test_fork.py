"""Fork safety: a child starts clean and leaves the parent's parked calls alone.

The scenario runs in tests/reliability/fork_app.py (a fork inside a pytest process would
inherit pytest's own threads and state): the parent parks 20 BLPOPs on one wrapped redis
client plus one other call, forks from a coroutine on its running loop; the child closes
every socket it inherited, collects garbage, makes fresh calls on a new loop, exits; then the
parent feeds the parked calls their replies.

What goes wrong without greenasync's at-fork handler (the control test): each hub's private
epoll set is one kernel object shared by parent and child, so the child closing an
inherited socket took its fd out of the *parent's* set, and the parent's parked calls never
woke. The child also saw the parent's loop and 21 parked workers in ``statistics()``.
"""

from ._support import last_json, run_script

CALLS = 20


def reports(stdout):
    child = parent = None
    for line in stdout.splitlines():
        if line.startswith("CHILD "):
            child = last_json(line[6:])
        elif line.startswith("PARENT "):
            parent = last_json(line[7:])
    return child, parent


def test_forked_child_starts_clean_and_the_parents_parked_calls_complete(redis_url):
    rc, out, err = run_script("fork_app.py", redis_url, timeout=60)
    child, parent = reports(out)
    figures = f"rc={rc} child={child} parent={parent} stderr={err[-2000:]}"
    assert rc == 0 and child is not None and parent is not None, figures
    # The child: no inherited loop or worker in sight, fresh calls work (a new client and
    # the inherited one, whose redis-py pool resets itself in a child).
    assert (child["start_loops"], child["start_workers"], child["start_parked"]) == (0, 0, 0), \
        figures
    assert child["closed_inherited_sockets"] >= CALLS + 2, figures
    assert child["values"] == [f"from {parent['child_pid']}"] * 2 and child["echoes_ok"], figures
    assert parent["child_status"] == 0, figures
    # The parent: every parked call completed with its own reply, none hung.
    assert not parent["hung"] and parent["blpops_ok"], figures
    assert parent["job_result"] == "reply", figures
    # The inherited greenlets never ran in the child: the job's cleanup ran once, in the
    # parent (a greenlet collected or ended in the child would have run it there too).
    assert parent["cleanup_pids"] == [parent["pid"]], figures


def test_control_without_the_fork_handler_the_child_breaks_the_parents_calls(redis_url):
    # Restores in the child what the handler drops: shows what the test above guards.
    rc, out, err = run_script("fork_app.py", redis_url, "--without-fork-handler", timeout=60)
    child, parent = reports(out)
    figures = f"rc={rc} child={child} parent={parent} stderr={err[-2000:]}"
    assert rc == 0 and child is not None and parent is not None, figures
    assert child["start_workers"] == CALLS + 1 and child["start_loops"] == 1, figures
    assert parent["hung"], figures  # the parent's calls lost their epoll registrations
