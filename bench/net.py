"""`python -m bench.net`: virtio-net over a tap, the test guest on hotswap and on QEMU microvm, interleaved
(net-tx hotswap, net-tx QEMU, net-rx hotswap, net-rx QEMU; next round).

    net-tx  the guest keeps `--depth` 1514-byte frames in flight on its transmit queue for `--secs`; the host counts
            what arrived from the tap's own counter (rx_packets of the interface: every frame the VMM wrote)
    net-rx  from the moment the guest says it is ready, the host floods the tap with numbered 1514-byte frames from
            one Python thread (AF_PACKET, as fast as it can send); the guest counts what it receives for `--secs`
            from the first frame, with `--depth` receive buffers posted. Frames the VMM did not take in time are
            dropped by the tap (its tx_dropped counter): a finding, not an error

hotswap: `python -m hotswap run --net tap=NAME` (its event-loop thread moves frames between the tap and guest RAM
with readv/writev). QEMU: `-netdev tap,ifname=NAME,script=no,downscript=no -device virtio-net-device` (userspace
virtio-net, no vhost). The tap is created here, brought up with IPv6 off (no host chatter), and deleted at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.guest import guest_image
from bench.host import HostWatch
from bench.iobench import GuestRun, Hooks, IoResult, QemuRunner, guest_cmdline, host_tsc_khz, qemu_net_args, run_hotswap
from bench.qemu import Fleet, qemu_version
from bench.report import BenchError, Table, Throughput, add_record_options, emit, fmt, median_of, ratio

ETHERTYPE = 0x88B5
FRAME_BYTES = 1514  # Ethernet header + 1500 bytes; what the guest sends and receives too
MIN_RECORDED_RUNS = 5
SEND_BATCH = 256  # frames between two looks at the stop flag

GuestFn = Callable[[Hooks], GuestRun]  # one guest run on one VMM, with the hooks the direction needs


# -- the tap ---------------------------------------------------------------------------------------------------------
def create_tap(name: str) -> None:
    try:
        subprocess.run(["ip", "tuntap", "add", "mode", "tap", "name", name], check=True, capture_output=True)
        subprocess.run(["sysctl", "-q", "-w", f"net.ipv6.conf.{name}.disable_ipv6=1"], check=False)
        subprocess.run(["ip", "link", "set", name, "up"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise BenchError(f"creating tap {name}: {exc}") from exc


def delete_tap(name: str) -> None:
    subprocess.run(["ip", "link", "del", name], check=False, capture_output=True)


def tap_counters(name: str) -> dict[str, int]:
    """The interface's counters. A frame the VMM writes to the tap is received by the interface (rx_*); a frame the
    host sends through the interface is transmitted to the VMM (tx_packets once the VMM has read it, tx_dropped
    when the tap's queue was full)."""
    base = Path("/sys/class/net") / name / "statistics"
    return {key: int((base / key).read_text()) for key in ("rx_packets", "rx_bytes", "tx_packets", "tx_dropped")}


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {key: after[key] - before[key] for key in before}


class Flood:
    """Sends numbered "HSB1" frames into the tap from a thread, as fast as one Python thread can."""

    def __init__(self, tap: str) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        self.sock.bind((tap, 0))
        self.sent = 0
        self.seconds = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, _line: str = "") -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._send, name="flood", daemon=True)
            self._thread.start()

    def stop(self, _result: IoResult | None = None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def close(self) -> None:
        self.stop()
        self.sock.close()

    def _send(self) -> None:
        frame = bytearray(b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x02" + struct.pack(">H", ETHERTYPE) + b"HSB1")
        frame = frame.ljust(FRAME_BYTES, b"\0")
        send, pack, counter = self.sock.send, struct.pack_into, 0
        started = time.monotonic()
        while not self._stop.is_set():
            for _ in range(SEND_BATCH):
                counter += 1
                pack("<Q", frame, 18, counter)
                try:
                    send(frame)
                except OSError:  # ENOBUFS under pressure: not sent, not counted
                    counter -= 1
        self.seconds = time.monotonic() - started
        self.sent = counter


# -- series ----------------------------------------------------------------------------------------------------------
@dataclass
class Series:
    side: str
    direction: str
    results: list[IoResult] = field(default_factory=list)
    host_frames: list[int] = field(default_factory=list)  # net-tx: frames the tap received from the VMM
    offered: list[float] = field(default_factory=list)  # net-rx: frames/s the host sent over the whole flood
    tap_dropped: list[float] = field(default_factory=list)  # net-rx: % of the frames sent the tap dropped (queue full)
    failures: list[str] = field(default_factory=list)

    def frames(self) -> Throughput | None:
        return Throughput.of([r.ops_per_s for r in self.results]) if self.results else None

    def mbits(self) -> Throughput | None:
        return Throughput.of([r.bytes_per_s * 8 / 1e6 for r in self.results]) if self.results else None

    def delivered(self) -> Throughput | None:
        """net-tx: frames the host counted / frames the guest saw completed; net-rx: frames the guest counted /
        frames the host numbered within the guest's window."""
        if self.direction == "tx":
            pairs = [(h, r.ops) for h, r in zip(self.host_frames, self.results, strict=True)]
        else:
            pairs = [(r.ops, r.window_frames) for r in self.results]
        values = [100 * a / b for a, b in pairs if b]
        return Throughput.of(values) if values else None


def run_tx(run: GuestFn, tap: str, series: Series) -> None:
    before = tap_counters(tap)
    result = run(Hooks()).result
    series.results.append(result)
    series.host_frames.append(delta(before, tap_counters(tap))["rx_packets"])


def run_rx(run: GuestFn, tap: str, series: Series) -> None:
    flood = Flood(tap)
    try:
        before = tap_counters(tap)
        result = run(Hooks(on_start=flood.start, on_result=flood.stop)).result
    finally:
        flood.close()
    counters = delta(before, tap_counters(tap))
    series.results.append(result)
    series.offered.append(flood.sent / flood.seconds if flood.seconds else 0.0)
    series.tap_dropped.append(100 * counters["tx_dropped"] / flood.sent if flood.sent else 0.0)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.net", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each direction on each VMM (default 5)")
    parser.add_argument("--secs", type=int, default=5, help="seconds per run (default 5)")
    parser.add_argument("--depth", type=int, default=16, help="frames in flight / receive buffers (default 16)")
    parser.add_argument("--quick", action="store_true", help="2 runs of 1 s each (development; not recordable)")
    add_record_options(parser, "tables")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.secs = 2, 1
    if args.record and args.runs < MIN_RECORDED_RUNS:
        parser.error(f"--record needs at least {MIN_RECORDED_RUNS} runs (BENCHMARKS.md)")
    if args.runs < 1 or args.secs < 1 or not 1 <= args.depth <= 64:
        parser.error("--runs and --secs must be >= 1, --depth 1..64 (the guest's queues have 64 entries)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not os.path.exists("/dev/net/tun"):
        print("bench.net: /dev/net/tun is missing: no tap devices on this host", file=sys.stderr)
        return 1
    watch = HostWatch()
    kernel = guest_image()
    workdir = Path(tempfile.mkdtemp(prefix="hotswap-bench-net-"))
    tap = f"hsbn{os.getpid() % 100000}"
    series = {(d, side): Series(side, d) for d in ("tx", "rx") for side in ("hotswap", "QEMU")}
    tsc_khz = 0
    try:
        create_tap(tap)
        with Fleet(workdir) as fleet:
            qemu = QemuRunner(fleet)
            tsc_khz = host_tsc_khz()

            def guest(side: str, direction: str, rnd: int) -> GuestFn:
                kind = f"net-{direction}"
                if side == "hotswap":
                    cmd = guest_cmdline(kind, args.secs, args.depth, "mmio", tsc_khz)
                    name = f"{kind}-{rnd}"
                    return lambda hooks: run_hotswap(kernel, cmd, ["--net", f"tap={tap}"], workdir, name, args.secs,
                                                     hooks)  # fmt: skip
                cmd = guest_cmdline(kind, args.secs, args.depth, "port", tsc_khz)
                return lambda hooks: qemu.run(kernel, cmd, qemu_net_args(tap), args.secs, hooks)

            # Warm-up, not counted: one short net-tx on each VMM.
            for side in ("hotswap", "QEMU"):
                run_tx(guest(side, "tx", -1), tap, Series(side, "tx"))
            for rnd in range(args.runs):
                for direction in ("tx", "rx"):
                    # The two VMMs swap places every round, so neither always follows the same run.
                    for side in ("hotswap", "QEMU") if rnd % 2 == 0 else ("QEMU", "hotswap"):
                        s = series[(direction, side)]
                        try:
                            (run_tx if direction == "tx" else run_rx)(guest(side, direction, rnd), tap, s)
                        except BenchError as exc:
                            s.failures.append(f"net-{direction} run {rnd + 1}: {exc}")
                print(f"round {rnd + 1}/{args.runs} done", file=sys.stderr, flush=True)
    except BenchError as exc:
        print(f"bench.net: {exc}", file=sys.stderr)
        return 1
    finally:
        delete_tap(tap)
        shutil.rmtree(workdir, ignore_errors=True)

    throughput = Table(
        ["direction", "side", "n", "frames/s min", "median", "max", "Mbit/s min", "median", "max", "vs QEMU"],
        caption=f"virtio-net over a tap, {FRAME_BYTES}-byte frames, depth {args.depth}, {args.secs} s runs, as the "
        "guest counted and timed them: min / median / max; ratio of medians",
    )
    delivery = Table(
        ["direction", "side", "n", "host frames/s p50", "guest frames/s p50", "delivered % min", "median", "max",
         "tap dropped % p50"],
        caption="what the host saw: net-tx = frames the tap received / frames the guest saw completed (host rate "
        "over the guest's window); net-rx = frames the host sent within the guest's window (its numbers in the first "
        "and last frame counted) per second / counted by the guest, delivered = counted / sent in the window, "
        "tap dropped = frames the tap's full queue dropped / frames "
        "the host sent over the whole flood",
    )  # fmt: skip
    notes: list[str] = []
    flood_rates: list[str] = []
    for direction in ("tx", "rx"):
        qemu_median = median_of(series[(direction, "QEMU")].frames())
        for side in ("hotswap", "QEMU"):
            s = series[(direction, side)]
            frames, mbits, delivered = s.frames(), s.mbits(), s.delivered()
            vs = ratio(median_of(frames), qemu_median) if side == "hotswap" else "-"
            throughput.add(
                f"net-{direction}", side, len(s.results), *(frames.cells(digits=0) if frames else ["-"] * 3),
                *(mbits.cells(digits=1) if mbits else ["-"] * 3), vs,
            )  # fmt: skip
            if direction == "tx":
                host_rates = [h / r.secs for h, r in zip(s.host_frames, s.results, strict=True) if r.secs_us]
            else:  # what the host sent while the guest counted: its numbers between the first and last frame counted
                host_rates = [r.window_frames / r.secs for r in s.results if r.secs_us]
                if s.offered:
                    flood_rates.append(f"{side} {fmt(Throughput.of(s.offered).median, 0)}")
            host_rate = Throughput.of(host_rates).median if host_rates else None
            drops = Throughput.of(s.tap_dropped).median if s.tap_dropped else None
            delivery.add(
                f"net-{direction}", side, len(s.results), fmt(host_rate, 0), fmt(median_of(frames), 0),
                *(delivered.cells(digits=2) if delivered else ["-"] * 3), fmt(drops, 1),
            )  # fmt: skip
            notes += [f"{side} {failure}" for failure in s.failures]
            errors = sum(r.errors for r in s.results)
            if errors:
                notes.append(f"{side} net-{direction}: {errors} errors reported by the guest")
    example = guest_cmdline("net-rx", args.secs, args.depth, "port", tsc_khz)
    notes = [
        f"the same test guest image and cmdline on both VMMs (e.g. `{example}`; uart=mmio on hotswap), 1 vCPU, "
        "128 MiB; the guest's ring 3 polls its virtqueues (no interrupts) and notifies only when the device's "
        "avail_event asks (EVENT_IDX); no offloads negotiated; frames/s and Mbit/s from the guest's own count and "
        f"TSC (Mbit = 10^6 bits of {FRAME_BYTES}-byte frames: Ethernet header included, vnet header and FCS not)",
        "net-tx window: first frame queued -> last completion; net-rx window: first frame received -> last frame "
        "counted; interleaved net-tx hotswap, net-tx QEMU, net-rx hotswap, net-rx QEMU per round (hotswap and "
        "QEMU swap places every other round); one warm-up net-tx on each VMM first (not counted)",
        "net-rx: the host's sender is one Python thread on the same 2 CPUs as the VMM (its vCPU thread spins while "
        "the guest polls, plus hotswap's event-loop thread or QEMU's main loop), so the offered rate is what was "
        "left for it; the tap's queue overflows when the VMM falls behind: those drops are the finding; median "
        f"send rate over the whole flood (including before and after the guest's window): {', '.join(flood_rates)} "
        "frames/s",
        f"hotswap: its Python event-loop thread does one readv/writev per frame; QEMU: {qemu_version()}, "
        "userspace virtio-net on the tap (no vhost-net)",
        "nested virtualization (kvm_pvm): the guest's ring-3 code runs natively and drives the devices by MMIO "
        "stores that exit to the VMM; hotswap's device model is Python on an event-loop thread",
        *notes,
        *args.note,
        watch.summary(),
    ]
    emit("net: virtio-net over a tap, hotswap vs QEMU microvm", [throughput, delivery], notes, args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
