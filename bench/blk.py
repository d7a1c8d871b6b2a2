"""`python -m bench.blk`: virtio-blk throughput of the test guest on hotswap and on QEMU microvm, beside the host's
own speed on the same raw image file, interleaved (host, hotswap, QEMU, host O_DIRECT; next pattern; next round).

Patterns: seq-read and seq-write (64 KiB requests), rand-read and rand-write (4 KiB requests, uniform over the
disk), `--depth` requests in flight (16). The image (256 MiB of random bytes by default) lives in the host's page
cache, written and fsynced before the first run:

    host raw      fio (psync: one thread, one synchronous pread/pwrite at a time, buffered, page cache kept) on
                  the image; a Python preadv/pwritev loop doing the same if fio is missing
    hotswap       `python -m hotswap run --disk IMAGE`: the image opened without O_DIRECT, requests served with
                  preadv/pwritev by the event-loop thread, one at a time
    QEMU          microvm, `-drive ...,cache=writeback,aio=threads -device virtio-blk-device`: QEMU's default, the host
                  page cache too, requests served by a thread pool
    host O_DIRECT fio with direct=1 on a second image of the same size (the host's virtual disk itself, no page
                  cache): a reference only, neither VMM uses O_DIRECT here. A second file because O_DIRECT writes
                  drop the written range from the page cache, which would send the next reads of the measured
                  image to the disk

No FLUSH is sent in the write patterns (the guest's writes end in the page cache, as fio's do).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.guest import guest_image
from bench.host import HostWatch
from bench.iobench import (
    GuestRun,
    IoResult,
    QemuRunner,
    guest_cmdline,
    host_tsc_khz,
    qemu_blk_args,
    run_hotswap,
)
from bench.qemu import Fleet, qemu_version
from bench.report import BenchError, Table, Throughput, add_record_options, emit, fmt, median_of, ratio

MIB = 1024 * 1024
SEQ_BS = 64 * 1024
RAND_BS = 4096
MIN_RECORDED_RUNS = 5


@dataclass(frozen=True)
class Pattern:
    name: str  # seq-read, ...
    bs: int

    @property
    def guest_kind(self) -> str:
        return f"blk-{self.name}"

    @property
    def fio_rw(self) -> str:
        return {"seq-read": "read", "seq-write": "write", "rand-read": "randread", "rand-write": "randwrite"}[self.name]

    @property
    def writes(self) -> bool:
        return self.name.endswith("write")

    @property
    def sequential(self) -> bool:
        return self.name.startswith("seq")


PATTERNS = [Pattern("seq-read", SEQ_BS), Pattern("seq-write", SEQ_BS), Pattern("rand-read", RAND_BS),
            Pattern("rand-write", RAND_BS)]  # fmt: skip


@dataclass(frozen=True)
class Measurement:
    ops_per_s: float
    bytes_per_s: float


# -- the host's own speed ------------------------------------------------------------------------------------------
def fio_available() -> bool:
    return shutil.which("fio") is not None


def host_fio(image: Path, pattern: Pattern, secs: int, direct: bool) -> Measurement:
    argv = [
        "fio", "--name=host", f"--filename={image}", f"--rw={pattern.fio_rw}", f"--bs={pattern.bs}",
        "--ioengine=psync", "--numjobs=1", f"--direct={int(direct)}", "--invalidate=0", "--time_based",
        f"--runtime={secs}", f"--size={image.stat().st_size}", "--norandommap", "--randrepeat=0",
        "--output-format=json",
    ]  # fmt: skip
    try:
        out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=secs + 60).stdout
        job = json.loads(out[out.index("{") :])["jobs"][0]["write" if pattern.writes else "read"]
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, IndexError) as exc:
        raise BenchError(f"host fio {pattern.name}: {exc}") from exc
    return Measurement(float(job["iops"]), float(job["bw_bytes"]))


def host_python(image: Path, pattern: Pattern, secs: int) -> Measurement:
    """The fallback without fio: one thread, one synchronous preadv/pwritev at a time, as hotswap issues them."""
    size = image.stat().st_size
    blocks = size // pattern.bs
    buffer = bytearray(os.urandom(pattern.bs))
    view = [memoryview(buffer)]
    fd = os.open(image, os.O_RDWR | os.O_CLOEXEC)
    ops, rng, block = 0, 0x9E3779B97F4A7C15, 0
    try:
        started = time.monotonic()
        deadline = started + secs
        while True:
            for _ in range(256):
                if pattern.sequential:
                    block = (block + 1) % blocks
                else:
                    rng ^= (rng << 13) & 0xFFFFFFFFFFFFFFFF
                    rng ^= rng >> 7
                    rng ^= (rng << 17) & 0xFFFFFFFFFFFFFFFF
                    block = rng % blocks
                if pattern.writes:
                    os.pwritev(fd, view, block * pattern.bs)
                else:
                    os.preadv(fd, view, block * pattern.bs)
                ops += 1
            now = time.monotonic()
            if now >= deadline:
                break
    finally:
        os.close(fd)
    elapsed = now - started
    return Measurement(ops / elapsed, ops * pattern.bs / elapsed)


def resident_percent(path: Path) -> float | None:
    """How much of the file is in the page cache (util-linux fincore), or None if that cannot be told."""
    try:
        out = subprocess.run(
            ["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
            check=True, capture_output=True, text=True, timeout=30,
        ).stdout  # fmt: skip
        return 100 * int(out.split()[0]) / path.stat().st_size
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def make_image(path: Path, size: int) -> None:
    """Random bytes (no holes, nothing compressible), fsynced: the page cache then holds clean pages."""
    chunk = os.urandom(MIB)
    with path.open("wb") as f:
        for _ in range(size // MIB):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())


# -- series ----------------------------------------------------------------------------------------------------------
@dataclass
class Series:
    label: str
    values: list[Measurement] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    errors: int = 0  # requests the guest saw fail (status not OK)
    notifies: list[float] = field(default_factory=list)  # guest queue notifications per request

    def add_guest(self, result: IoResult) -> None:
        self.values.append(Measurement(result.ops_per_s, result.bytes_per_s))
        self.errors += result.errors
        if result.ops:
            self.notifies.append(result.notifies / result.ops)

    def iops(self) -> Throughput | None:
        return Throughput.of([v.ops_per_s for v in self.values]) if self.values else None

    def mbs(self) -> Throughput | None:
        return Throughput.of([v.bytes_per_s / 1e6 for v in self.values]) if self.values else None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.blk", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each pattern on each side (default 5)")
    parser.add_argument("--secs", type=int, default=5, help="seconds per run (default 5)")
    parser.add_argument("--depth", type=int, default=16, help="requests in flight in the guest (default 16)")
    parser.add_argument("--size", type=int, default=256, help="image size in MiB (default 256)")
    parser.add_argument("--patterns", default=",".join(p.name for p in PATTERNS), help="comma-separated subset")
    parser.add_argument("--no-direct", action="store_true", help="skip the host O_DIRECT reference rows")
    parser.add_argument("--quick", action="store_true", help="2 runs of 1 s each (development; not recordable)")
    parser.add_argument("--dir", type=Path, default=None, help="where the image goes (default: a temp directory)")
    add_record_options(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.secs = 2, 1
    if args.record and args.runs < MIN_RECORDED_RUNS:
        parser.error(f"--record needs at least {MIN_RECORDED_RUNS} runs (BENCHMARKS.md)")
    wanted = [name for name in args.patterns.split(",") if name]
    unknown = [name for name in wanted if name not in {p.name for p in PATTERNS}]
    if unknown or not wanted:
        parser.error(f"--patterns: choose from {', '.join(p.name for p in PATTERNS)}")
    args.patterns = [p for p in PATTERNS if p.name in wanted]
    if args.runs < 1 or args.secs < 1 or not 1 <= args.depth <= 21:
        parser.error("--runs and --secs must be >= 1, --depth 1..21 (the guest's 64-entry queue, 3 descriptors each)")
    return args


def guest_run(label: str, run: GuestRun, series: Series) -> None:
    series.add_guest(run.result)
    for warning in run.warnings:
        series.failures.append(f"{label}: {warning}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    watch = HostWatch()
    kernel = guest_image()
    workdir = Path(tempfile.mkdtemp(prefix="hotswap-bench-blk-", dir=args.dir))
    image = workdir / "disk.img"
    direct_image = workdir / "direct.img"
    use_fio = fio_available()
    tsc_khz = 0
    resident_before = resident_after = None
    sides = ["host", "hotswap", "QEMU"] + ([] if args.no_direct or not use_fio else ["host O_DIRECT"])
    series = {(p.name, side): Series(side) for p in args.patterns for side in sides}
    try:
        make_image(image, args.size * MIB)
        if "host O_DIRECT" in sides:
            make_image(direct_image, args.size * MIB)
        resident_before = resident_percent(image)
        with Fleet(workdir) as fleet:
            qemu = QemuRunner(fleet)
            hotswap_disk = ["--disk", str(image)]
            # Warm-up, not counted: both VMMs' code paths and the image's pages.
            tsc_khz = host_tsc_khz()
            run_hotswap(kernel, guest_cmdline("blk-rand-read", 1, args.depth, "mmio", tsc_khz), hotswap_disk, workdir,
                        "warm", 1)  # fmt: skip
            qemu.run(kernel, guest_cmdline("blk-rand-read", 1, args.depth, "port", tsc_khz), qemu_blk_args(image), 1)
            for rnd in range(args.runs):
                for p in args.patterns:
                    host = series[(p.name, "host")]
                    if use_fio:
                        host.values.append(host_fio(image, p, args.secs, direct=False))
                    else:
                        host.values.append(host_python(image, p, args.secs))
                    # The two VMMs swap places every round, so neither always runs right after the host's pass.
                    for side in ("hotswap", "QEMU") if rnd % 2 == 0 else ("QEMU", "hotswap"):
                        try:
                            if side == "hotswap":
                                cmd = guest_cmdline(p.guest_kind, args.secs, args.depth, "mmio", tsc_khz)
                                run = run_hotswap(kernel, cmd, hotswap_disk, workdir, f"{p.name}-{rnd}", args.secs)
                            else:
                                cmd = guest_cmdline(p.guest_kind, args.secs, args.depth, "port", tsc_khz)
                                run = qemu.run(kernel, cmd, qemu_blk_args(image), args.secs)
                            guest_run(f"{p.name} run {rnd + 1}", run, series[(p.name, side)])
                        except BenchError as exc:
                            series[(p.name, side)].failures.append(f"{p.name} run {rnd + 1}: {exc}")
                    if "host O_DIRECT" in sides:
                        direct = host_fio(direct_image, p, args.secs, direct=True)
                        series[(p.name, "host O_DIRECT")].values.append(direct)
                print(f"round {rnd + 1}/{args.runs} done", file=sys.stderr, flush=True)
        resident_after = resident_percent(image)
    except BenchError as exc:
        print(f"bench.blk: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    table = Table(
        ["pattern", "bs", "side", "n", "IOPS min", "median", "max", "MB/s min", "median", "max", "vs QEMU", "vs host"],
        caption=f"virtio-blk, {args.size} MiB raw image in the host page cache, depth {args.depth}, "
        f"{args.secs} s runs: min / median / max (MB = 10^6 bytes); ratios of medians",
    )
    notes: list[str] = []
    for p in args.patterns:
        host_iops = median_of(series[(p.name, "host")].iops())
        qemu_iops = median_of(series[(p.name, "QEMU")].iops())
        for side in sides:
            s = series[(p.name, side)]
            iops, mbs = s.iops(), s.mbs()
            vs_qemu = ratio(median_of(iops), qemu_iops) if side == "hotswap" else "-"
            vs_host = ratio(median_of(iops), host_iops) if side in ("hotswap", "QEMU") else "-"
            iops_cells = iops.cells(digits=0) if iops else ["-"] * 3
            mbs_cells = mbs.cells(digits=1) if mbs else ["-"] * 3
            table.add(p.name, p.bs, side, len(s.values), *iops_cells, *mbs_cells, vs_qemu, vs_host)
            notes += [f"{side} {failure}" for failure in s.failures]
            if s.errors:
                notes.append(f"{side} {p.name}: {s.errors} requests completed with an error status (not counted)")
    notify = {
        side: fmt(sum(n for p in args.patterns for n in series[(p.name, side)].notifies)
                  / max(1, sum(len(series[(p.name, side)].notifies) for p in args.patterns)), 3)
        for side in ("hotswap", "QEMU")
    }  # fmt: skip
    host_tool = (
        "fio 1 job, ioengine=psync (one synchronous request at a time), buffered, invalidate=0"
        if use_fio
        else "a Python preadv/pwritev loop, one synchronous request at a time (fio not installed)"
    )
    example = guest_cmdline("blk-rand-read", args.secs, args.depth, "port", tsc_khz)
    notes = [
        f"the same test guest image and cmdline on both VMMs (e.g. `{example}`; uart=mmio on hotswap), "
        "1 vCPU, 128 MiB; the guest's ring 3 keeps `depth` requests in flight, polls the "
        "used ring and notifies through QueueNotify only when the device's avail_event asks (EVENT_IDX); timed by the "
        "guest's TSC from the first submission to the last completion; sequential patterns use 64 KiB requests, "
        "random ones 4 KiB at uniformly random aligned offsets",
        f"interleaved per pattern: {', '.join(sides)} (hotswap and QEMU swap places every other round); "
        f"{args.runs} rounds; one warm-up run of each VMM first (not counted)",
        f"host: {host_tool}; hotswap: image opened without O_DIRECT (page cache), requests served synchronously "
        f"by its Python event-loop thread; QEMU: {qemu_version()}, microvm, cache=writeback aio=threads (its "
        "defaults: page cache too, a thread pool); host O_DIRECT = the host's own virtual disk, reference only",
        f"queue notifications per request (guest-counted): hotswap {notify['hotswap']}, QEMU {notify['QEMU']}",
        f"image resident in the host page cache (fincore): {fmt(resident_before, 1)}% before the first run, "
        f"{fmt(resident_after, 1)}% after the last",
        "nested virtualization (kvm_pvm): the guest's ring-3 code runs natively and drives the devices by MMIO "
        "stores that exit to the VMM; hotswap's device model is Python on an event-loop thread; the hotswap and "
        "QEMU vCPU threads each spin at 100% while the guest polls, on a 2-CPU host",
        *notes,
        *args.note,
        watch.summary(),
    ]
    emit("blk: virtio-blk throughput, hotswap vs QEMU microvm vs the host", table, notes, args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
