"""`hotswap upgrade`: ask running VMMs to hand their guests to a new VMM process, and report how it went."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from hotswap import __version__, exitcodes, registry
from hotswap.api import client
from hotswap.errors import ApiError
from hotswap.upgrade_placement import follow_vmm


def _request_upgrade(record: registry.VmRecord, args: argparse.Namespace) -> dict[str, Any]:
    # A VMM pinned with --vmm-cpus keeps its guest's vCPUs to themselves; this command's own work (waiting, then
    # printing and exiting while the new VMM settles) belongs on the VMM's CPUs too, below the VMM's own threads
    # (hotswap/machine/priority.py says why).
    follow_vmm(record.pid)
    body: dict[str, Any] = {"mode": args.mode, "timeout": args.timeout}
    if args.executable:
        body["exec"] = args.executable
    # The VMM answers once the successor runs the guest (or once it has rolled back); allow for all of it.
    return client.request(record.api_socket, "PUT", "/vm/upgrade", body, timeout=args.timeout + 30)


def describe(result: dict[str, Any]) -> str:
    phases = ", ".join(f"{name} {value}" for name, value in result["phases_us"].items())
    return (
        f"upgraded {result['name']}: pid {result['old_pid']} -> {result['new_pid']}, "
        f"version {result['old_version']} -> {result['new_version']}, generation {result['generation']}, "
        f"downtime {result['downtime_us']} us ({phases} us)"
    )


def upgrade_one(args: argparse.Namespace, record: registry.VmRecord) -> int:
    if not args.json:
        print(f"upgrading {record.name} (pid {record.pid})...", file=sys.stderr, flush=True)
    try:
        result = _request_upgrade(record, args)
    except ApiError as exc:
        raise ApiError(f"{exc}{_who_runs_it_now(record)}", exc.status) from None
    print(json.dumps(result) if args.json else describe(result))
    return exitcodes.OK


def _who_runs_it_now(record: registry.VmRecord) -> str:
    """After a failed request: if the VMM we asked is gone, say which one runs the guest now (a successor that
    took over when its predecessor died mid-upgrade), or that none does."""
    if registry.pid_alive(record.pid):
        return ""
    time.sleep(0.5)  # a successor taking over writes its record right after it resumed the guest
    current = registry.read_record(record.name)
    if current is not None and current.pid != record.pid and registry.pid_alive(current.pid):
        return f"; VMM pid {record.pid} died during the upgrade and pid {current.pid} now runs the guest"
    return f"; VMM pid {record.pid} died during the upgrade and no VMM runs the guest"


def upgrade_all(args: argparse.Namespace) -> int:
    """Upgrade every VMM whose running version differs from this (newly installed) hotswap's version."""
    outcomes: list[dict[str, Any]] = []
    for record in registry.all_records():
        try:
            info = client.request(record.api_socket, "GET", "/vm", timeout=5.0)
        except ApiError as exc:
            if registry.pid_alive(record.pid):
                outcomes.append({"name": record.name, "pid": record.pid, "outcome": "failed", "error": str(exc)})
            continue
        if info["version"] == __version__ and not args.force:
            outcomes.append(
                {"name": record.name, "pid": record.pid, "outcome": "skipped", "reason": f"already runs {__version__}"}
            )
            continue
        if not args.json:
            print(
                f"upgrading {record.name} (pid {record.pid}, {info['version']} -> {__version__})...",
                file=sys.stderr,
                flush=True,
            )
        try:
            result = _request_upgrade(record, args)
        except ApiError as exc:
            outcomes.append({"name": record.name, "pid": record.pid, "outcome": "failed", "error": str(exc)})
            if not args.json:
                print(f"FAILED {record.name}: {exc}")
            continue
        outcomes.append({"name": record.name, "pid": record.pid, "outcome": "upgraded", "result": result})
        if not args.json:
            print(describe(result))
    counts = {kind: sum(1 for o in outcomes if o["outcome"] == kind) for kind in ("upgraded", "skipped", "failed")}
    if args.json:
        print(json.dumps({"outcomes": outcomes, **counts}))
    else:
        print(f"{counts['upgraded']} upgraded, {counts['skipped']} skipped, {counts['failed']} failed")
    return exitcodes.ERROR if counts["failed"] else exitcodes.OK
