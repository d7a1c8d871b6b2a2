"""`hotswap`: run VMs, list them, attach to their consoles, pause/resume/stop them, and upgrade them live.

Every command prints human text by default and JSON with --json; errors are one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from hotswap import __version__, exitcodes, log, registry
from hotswap.api import client
from hotswap.config import DiskConfig, MachineConfig, NetConfig
from hotswap.errors import ApiError, ConfigError, HotswapError
from hotswap.machine.affinity import complement, parse_cpu_list
from hotswap.units import format_duration, format_size, parse_size
from kvm import KvmError

DEFAULT_CMDLINE = "console=ttyS0 reboot=k panic=1"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    log.configure(args.log_level, json=getattr(args, "log_json", False))
    try:
        code: int = args.handler(args)
        return code
    except (HotswapError, KvmError) as exc:
        print(f"hotswap: error: {exc}", file=sys.stderr)
        return exitcodes.ERROR
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hotswap", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"hotswap {__version__}")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("HOTSWAP_LOG_LEVEL", "warning"),
        choices=["debug", "info", "warning", "error"],
        help="log verbosity on stderr (default: warning; HOTSWAP_LOG_LEVEL)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="boot a VM", description="Boot a VM from a Linux kernel (or the test guest).")
    run.add_argument("--kernel", required=True, help="vmlinux (ELF with a PVH note) or bzImage")
    run.add_argument("--initrd", help="initramfs / initrd image")
    run.add_argument("--cmdline", default=DEFAULT_CMDLINE, help=f"kernel command line (default: {DEFAULT_CMDLINE!r})")
    run.add_argument("--mem", default="512M", help="guest RAM, e.g. 512M or 2G (default 512M)")
    run.add_argument("--cpus", type=int, default=1, help="number of vCPUs (default 1)")
    run.add_argument("--name", help="VM name (default vm-PID); names the API and console sockets")
    run.add_argument("--daemon", action="store_true", help="detach; the console is a socket (`hotswap console`)")
    run.add_argument("--console-log", help="also append everything the guest prints to this file")
    run.add_argument("--api-sock", help="control API socket path (default RUNDIR/NAME.sock)")
    run.add_argument("--disk", action="append", default=[], metavar="PATH[,ro]", help="virtio-blk disk (repeatable)")
    run.add_argument(
        "--net",
        action="append",
        default=[],
        metavar="tap=NAME|fd=N[,mac=MAC]",
        help="virtio-net on a tap interface by name, or on an open tap fd handed in (repeatable)",
    )
    run.add_argument("--rng", action="store_true", help="virtio-rng entropy device")
    run.add_argument(
        "--vcpu-cpus",
        metavar="LIST",
        help="host CPUs the vCPU threads run on, e.g. 2-3 (default: any); kept across upgrades",
    )
    run.add_argument(
        "--vmm-cpus",
        metavar="LIST",
        help="host CPUs for the VMM's other threads and its upgrades (default with --vcpu-cpus: the other CPUs)",
    )
    run.add_argument("--json", action="store_true", help="with --daemon: print the result as JSON")
    run.add_argument("--log-json", action="store_true", help="log as JSON lines")
    run.set_defaults(handler=cmd_run)

    ls = commands.add_parser("ls", help="list running VMMs")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=cmd_ls)

    info = commands.add_parser("info", help="show one VM (GET /vm)")
    _add_target(info)
    info.set_defaults(handler=cmd_info)

    for name, verb, text in (
        ("pause", "PUT /vm/pause", "pause a VM's vCPUs"),
        ("resume", "PUT /vm/resume", "resume a paused VM"),
        ("stop", "PUT /vm/shutdown", "stop a VM and its VMM"),
    ):
        sub = commands.add_parser(name, help=text)
        _add_target(sub)
        sub.set_defaults(handler=cmd_simple, api_call=verb)

    console = commands.add_parser("console", help="attach to a daemon VM's serial console (detach: Ctrl-])")
    _add_target(console, with_json=False)
    console.set_defaults(handler=cmd_console)

    upgrade = commands.add_parser(
        "upgrade",
        help="replace a running VMM with the installed hotswap, without stopping the guest",
        description="Hand a running guest to a new VMM process (memfds and fds move, no guest memory is copied).",
    )
    _add_target(upgrade)
    upgrade.add_argument("--all", action="store_true", help="upgrade every VMM whose version differs from ours")
    upgrade.add_argument("--exec", dest="executable", help="the hotswap executable to hand over to")
    upgrade.add_argument(
        "--mode",
        choices=["transfer", "exec"],
        default="transfer",
        help="transfer: a new process (default); exec: the VMM re-executes itself, keeping its pid",
    )
    upgrade.add_argument("--timeout", type=float, default=30.0, help="seconds the successor may take (default 30)")
    upgrade.add_argument("--force", action="store_true", help="with --all: upgrade even VMMs already at our version")
    upgrade.set_defaults(handler=cmd_upgrade)

    successor = commands.add_parser("_successor", help=argparse.SUPPRESS)
    handover = successor.add_mutually_exclusive_group(required=True)
    handover.add_argument("--fd", type=int, help="the channel to the old VMM (transfer mode)")
    handover.add_argument("--exec-image", type=int, help="the image an exec-mode upgrade left (exec mode)")
    handover.add_argument("--probe", action="store_true", help="print the versions this build speaks")
    successor.set_defaults(handler=cmd_successor)
    return parser


def _add_target(parser: argparse.ArgumentParser, with_json: bool = True) -> None:
    parser.add_argument("name", nargs="?", help="VM name")
    parser.add_argument("--name", dest="name_opt", metavar="NAME", help="VM name")
    parser.add_argument("--pid", type=int, help="pid of the VMM")
    if with_json:
        parser.add_argument("--json", action="store_true", help="print JSON")


def _target(args: argparse.Namespace) -> registry.VmRecord:
    return registry.find(name=args.name or args.name_opt, pid=args.pid)


def _print(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data) if getattr(args, "json", False) else text)


# -- run ---------------------------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from hotswap.launch import run_daemon, run_foreground

    config = config_from_args(args)
    config.validate()
    if args.daemon:
        return run_daemon(config, args.json)
    return run_foreground(config)


def config_from_args(args: argparse.Namespace) -> MachineConfig:
    name = args.name or f"vm-{os.getpid()}"
    mem = parse_size(args.mem)
    _check_host_memory(mem)
    console_socket = registry.console_socket_path(name)
    return MachineConfig(
        name=name,
        mem_size=mem,
        cpus=args.cpus,
        kernel=os.path.abspath(args.kernel),
        initrd=os.path.abspath(args.initrd) if args.initrd else None,
        cmdline=args.cmdline,
        console="socket" if args.daemon else "stdio",
        console_log=os.path.abspath(args.console_log) if args.console_log else None,
        api_socket=os.path.abspath(args.api_sock) if args.api_sock else registry.api_socket_path(name),
        console_socket=console_socket,
        disks=tuple(_parse_disk(d) for d in args.disk),
        nets=tuple(_check_net_fd(_parse_net(n, i)) for i, n in enumerate(args.net)),
        rng=args.rng,
        **_affinity_from_args(args),
    )


def _affinity_from_args(args: argparse.Namespace) -> dict[str, tuple[int, ...]]:
    """--vcpu-cpus and --vmm-cpus; with only --vcpu-cpus, the VMM's own threads get every other CPU we may use."""
    vcpu_cpus = parse_cpu_list(args.vcpu_cpus, "--vcpu-cpus") if args.vcpu_cpus else ()
    if args.vmm_cpus:
        vmm_cpus = parse_cpu_list(args.vmm_cpus, "--vmm-cpus")
    else:
        vmm_cpus = complement(vcpu_cpus) if vcpu_cpus else ()
    return {"vcpu_cpus": vcpu_cpus, "vmm_cpus": vmm_cpus}


def _check_host_memory(mem: int) -> None:
    if mem <= 0:
        raise ConfigError("--mem must be more than 0")
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if mem > host:
        raise ConfigError(f"--mem {format_size(mem)} is more than this host's {format_size(host)} of RAM")


def _parse_disk(spec: str) -> DiskConfig:
    path, _, options = spec.partition(",")
    if not path:
        raise ConfigError(f"--disk {spec!r}: expected PATH[,ro]")
    flags = {o for o in options.split(",") if o}
    if flags - {"ro", "rw"}:
        raise ConfigError(f"--disk {spec!r}: unknown options {', '.join(sorted(flags - {'ro', 'rw'}))}")
    return DiskConfig(os.path.abspath(path), read_only="ro" in flags)


NET_USAGE = "tap=NAME[,mac=MAC] or fd=N[,mac=MAC]"


def _parse_net(spec: str, index: int) -> NetConfig:
    """`tap=NAME[,mac=MAC]` or `fd=N[,mac=MAC]` (an open tap fd we inherited; see _check_net_fd)."""
    fields: dict[str, str] = {}
    for part in spec.split(","):
        key, sep, value = part.partition("=")
        if not sep or key not in ("tap", "fd", "mac") or key in fields:
            raise ConfigError(f"--net {spec!r}: expected {NET_USAGE}")
        fields[key] = value
    if ("tap" in fields) == ("fd" in fields):
        raise ConfigError(f"--net {spec!r}: give exactly one of tap=NAME or fd=N")
    mac = fields.get("mac") or f"52:54:00:12:34:{0x56 + index:02x}"
    if "tap" in fields:
        if not fields["tap"]:
            raise ConfigError(f"--net {spec!r}: tap=NAME needs a name")
        return NetConfig(fields["tap"], mac)
    try:
        fd = int(fields["fd"], 10)
    except ValueError:
        raise ConfigError(f"--net {spec!r}: fd={fields['fd']} is not an integer") from None
    if fd < 0:
        raise ConfigError(f"--net {spec!r}: fd={fd} is negative")
    if fd < 3:
        raise ConfigError(f"--net {spec!r}: fd {fd} is stdin, stdout or stderr; hand the tap in as fd 3 or above")
    return NetConfig("", mac, fd=fd)


def _check_net_fd(net: NetConfig) -> NetConfig:
    """A handed-in tap fd must be open here and a tap opened as the device model needs it (checked now, before a
    daemon forks; the VMM configures and owns it when it builds the device). Its interface name is for display."""
    from devices.virtio import TapError, check_tap_fd

    if net.fd is None:
        return net
    try:
        return replace(net, tap=check_tap_fd(net.fd))
    except TapError as exc:
        raise ConfigError(f"--net fd={net.fd}: {exc}") from None


# -- ls / info / pause / resume / stop ---------------------------------------------------------------------------
def cmd_ls(args: argparse.Namespace) -> int:
    rows = []
    for record in registry.all_records():
        try:
            rows.append(client.request(record.api_socket, "GET", "/vm", timeout=3.0))
        except ApiError:
            if not registry.pid_alive(record.pid):
                registry.remove_record(record.name, record.pid)  # left over from a VMM that died
            continue
    if args.json:
        print(json.dumps(rows))
        return exitcodes.OK
    print(f"{'NAME':<20} {'PID':>8} {'VERSION':<12} {'STATE':<8} {'CPUS':>4} {'MEM':>6} {'GEN':>4} {'UPTIME':>8}")
    for row in rows:
        print(
            f"{row['name']:<20} {row['pid']:>8} {row['version']:<12} {row['state']:<8} {row['cpus']:>4} "
            f"{format_size(row['mem_size']):>6} {row['generation']:>4} {format_duration(row['uptime_s']):>8}"
        )
    return exitcodes.OK


def cmd_info(args: argparse.Namespace) -> int:
    record = _target(args)
    data = client.request(record.api_socket, "GET", "/vm")
    lines = [f"{key}: {value}" for key, value in data.items() if key != "config"]
    for index, net in enumerate(data.get("config", {}).get("nets", [])):
        handed_in = f", handed in as fd {net['fd']}" if net.get("fd") is not None else ""
        lines.append(f"net{index}: tap {net.get('tap')}{handed_in}, mac {net.get('mac')}")
    _print(args, data, "\n".join(lines))
    return exitcodes.OK


def cmd_simple(args: argparse.Namespace) -> int:
    record = _target(args)
    method, path = args.api_call.split(" ", 1)
    data = client.request(record.api_socket, method, path)
    _print(args, data, f"{record.name}: {data.get('state', 'ok')}")
    return exitcodes.OK


# -- console -----------------------------------------------------------------------------------------------------
def cmd_console(args: argparse.Namespace) -> int:
    from hotswap.console_client import attach

    record = _target(args)
    return attach(record.console_socket)


# -- upgrade -----------------------------------------------------------------------------------------------------
def cmd_upgrade(args: argparse.Namespace) -> int:
    from hotswap.upgrade_cli import upgrade_all, upgrade_one

    if args.all:
        return upgrade_all(args)
    return upgrade_one(args, _target(args))


def cmd_successor(args: argparse.Namespace) -> int:
    if args.probe:
        from hotswap.handover.exec_mode import probe_answer

        print(json.dumps(probe_answer()))
        return exitcodes.OK
    if args.exec_image is not None:
        from hotswap.handover.exec_mode import run_exec_image

        return run_exec_image(args.exec_image)
    from hotswap.handover.successor import run_successor

    return run_successor(args.fd)


if __name__ == "__main__":
    sys.exit(main())
