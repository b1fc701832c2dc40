"""What a finished job found, printed the way `prunerd profile` and `prunerd prune` print it.

A person who waited on a job (`submit --wait`, `watch`) saw the events and then a bare
``done``; the table they came for had to be fetched with ``--json`` and read by eye.
"""

from __future__ import annotations

from ..client import Client


def print_result(client: Client, job_id: str, kind: str) -> None:
    """The result of finished job ``job_id`` of ``kind``: the profile table or the prune report;
    nothing for other kinds. A result this client cannot read is said, not raised."""
    if kind not in ("profile", "prune"):
        return
    result = client.result(job_id).get("result")
    if not isinstance(result, dict):
        return
    try:
        if kind == "profile":
            from profiler import BlockProfile

            from .render import print_profile

            print_profile(BlockProfile.from_dict(result))
        else:
            from pruner import PruneReport

            from .prune import print_report

            print_report(PruneReport.from_dict(result))
    except (KeyError, TypeError, ValueError) as e:
        print(
            f"the job's result is not one this prunerd can show ({type(e).__name__}: {e}); "
            f"`prunerd watch {job_id} --json` or the Python client's result() has it as JSON"
        )
