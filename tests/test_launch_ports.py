"""No test launches ranks on a fixed port: two suites on one machine (CI jobs side by side, a developer's demo on
DeepSpeed's default 29500) met on 29741 and 28 export tests errored with EADDRINUSE. Every launch takes a free
port from `_helpers.deepspeed_launcher` / `free_port`."""
import re
import socket
from pathlib import Path

from _helpers import deepspeed_launcher, free_port

TESTS = Path(__file__).resolve().parent
# A port written as a number where a launch is configured: `--master_port", "29741"`, `MASTER_PORT="29500"`,
# `port=29751`, a literal handed to a launcher helper, or any number in the 29500-29999 range torch and DeepSpeed
# use by convention.
FIXED = re.compile(r"""(--master_port["']?\s*,\s*["']?\d{4,5}|MASTER_PORT["']?\s*[=:,]\s*["']?\d{4,5}"""
                   r"""|\bport\s*=\s*\d{4,5}|\w*(?:launcher|deepspeed)\(\s*\d{4,5}|(?<![\d.])29[5-9]\d\d(?![\d.]))""")


def fixed_ports(text: str) -> list[str]:
    return [m.group(0) for m in FIXED.finditer(text)]


def test_no_test_file_hard_codes_a_launch_port():
    found = {str(p.relative_to(TESTS)): hits for p in sorted(TESTS.rglob("*.py"))
             if p.name != Path(__file__).name and (hits := fixed_ports(p.read_text(encoding="utf-8")))}
    assert not found, f"launch ports written as numbers (use _helpers.deepspeed_launcher or free_port): {found}"


def test_the_pattern_catches_each_way_a_port_was_written():
    for planted in ('launcher=["deepspeed", "--num_gpus", "2", "--master_port", "29741"]',
                    'MASTER_PORT="29500"', "MASTER_PORT=29500", "_start_probe(launches, tmp, 'a', port=29751)",
                    "launcher=_launcher(29753)", "_deepspeed(29771)", 'LAUNCH_2 + ["29741"]',
                    'for name, port in (("gathered", 29733), ("hooked", 29735))'):
        assert fixed_ports(planted), planted
    for fine in ("launcher=deepspeed_launcher()", "MASTER_PORT=str(free_port())", "seed=4294967295", "0.29500"):
        assert not fixed_ports(fine), fine


def test_a_free_port_can_be_bound_and_the_launcher_names_one():
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", port))  # free when handed out
    cmd = deepspeed_launcher(2)
    assert cmd[:3] == ["deepspeed", "--num_gpus", "2"] and cmd[3] == "--master_port" and 0 < int(cmd[4]) < 65536
