"""Fault injection for the handover safety tests: kill, exit, hang, raise or corrupt at a named step.

HOTSWAP_FAULT="SIDE@GEN:STEP:ACTION[,...]" where SIDE is `sender`, `successor` or `exec` (the new program image of
an exec-mode upgrade, step `takeover`), GEN the generation of the VMM doing the step (the sender's own generation;
the generation the successor is becoming), STEP a step name below, and ACTION one of kill (SIGKILL itself), exit
(exit status 1), hang (stop answering), raise (an exception at that point, as a bug would). Sender-only data
actions, step `state` (the STATE container) or `vcpus` (the STATE_VCPUS container, or vCPU 0's state record in
shared memory): corrupt (flip a byte), badversion (a container or record of an unknown format version), truncate
(send half the container; a record announcing half its length). Successor-only: step `records`, action `decline`
(decline the vCPU records offered in CONFIG, so the old VMM sends STATE_VCPUS: its fallback path). The variable is
inherited by successors; the generation keeps a fault to one upgrade."""

from __future__ import annotations

import os
import signal
import time

from hotswap import log

ENV = "HOTSWAP_FAULT"
# The steps of this build's protocol (5; "after_vcpus": the vCPUs sent, as STATE_VCPUS or as records; a successor
# fires it once its vCPUs are restored). A successor serving an older VMM has no "after_vcpus" (protocol 3 and
# older), and "after_restored" and "after_commit" on the RESTORED/COMMIT path of protocols 1-2.
SENDER_STEPS = (
    "after_hello",
    "after_config",
    "after_ready",
    "after_pause",
    "after_vcpus",
    "after_state",
    "after_resumed",
)
SUCCESSOR_STEPS = (
    "after_hello",
    "after_config",
    "after_ready",
    "after_vcpus",
    "after_state",
    "after_restore",
    "after_take",
    "after_resumed",
)


def _faults(side: str, generation: int) -> dict[str, str]:
    spec = os.environ.get(ENV, "")
    found: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        try:
            who, step, action = item.split(":")
            item_side, _, gen = who.partition("@")
        except ValueError:
            continue
        if item_side == side and (not gen or int(gen) == generation):
            found[step] = action
    return found


def action_at(side: str, generation: int, step: str) -> str | None:
    return _faults(side, generation).get(step)


def consume(side: str, generation: int, step: str | None = None) -> None:
    """Forget faults once they have been used (all of a side's for this generation, or one step's), so a retry of
    the same upgrade runs clean: one injected fault fails one attempt."""
    kept = []
    for item in filter(None, (part.strip() for part in os.environ.get(ENV, "").split(","))):
        who, _, rest = item.partition(":")
        item_side, _, gen = who.partition("@")
        item_step = rest.partition(":")[0]
        same = item_side == side and (not gen or (gen.isdigit() and int(gen) == generation))
        if not (same and (step is None or item_step == step)):
            kept.append(item)
    os.environ[ENV] = ",".join(kept)


def fault_point(side: str, generation: int, step: str) -> None:
    """Do the configured process-level fault at this step, if any."""
    action = action_at(side, generation, step)
    if action is None:
        return
    log.get("faults").warning("fault.injected", side=side, step=step, action=action)
    consume(side, generation, step)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "exit":
        os._exit(1)
    elif action == "hang":
        while True:
            time.sleep(3600)
    elif action == "raise":
        raise RuntimeError(f"fault injected at {side} {step}")


def record_fault(generation: int) -> str | None:
    """The data fault configured for the vCPUs (`vcpus`) when they travel as records in shared memory (protocol
    5, kvm/lane.py applies it), consumed like mangle_state's."""
    action = _faults("sender", generation).get("vcpus")
    if action is not None:
        consume("sender", generation, "vcpus")
    return action if action in ("corrupt", "truncate", "badversion") else None


def declines_records(generation: int) -> bool:
    """Whether the successor becoming `generation` is to decline the vCPU records (`successor@GEN:records:decline`),
    consumed once asked."""
    if action_at("successor", generation, "records") != "decline":
        return False
    consume("successor", generation, "records")
    return True


def mangle_state(blob: bytes, generation: int, part: str = "state") -> bytes:
    """Apply a data fault to the STATE (`part` "state") or STATE_VCPUS ("vcpus") container (sender side), if one
    is configured."""
    faults = _faults("sender", generation)
    action = faults.get(part)
    if action is not None:
        consume("sender", generation, part)
    if action == "corrupt":
        middle = len(blob) // 2
        return blob[:middle] + bytes([blob[middle] ^ 0xFF]) + blob[middle + 1 :]
    if action == "truncate":
        return blob[: len(blob) // 2]
    if action == "badversion":
        # The format version is the u16 right after the 8-byte magic; the CRC covers it, so recompute it too.
        import struct
        import zlib

        body = bytearray(blob[:-4])
        struct.pack_into("<H", body, 8, 99)
        return bytes(body) + struct.pack("<I", zlib.crc32(body))
    return blob
