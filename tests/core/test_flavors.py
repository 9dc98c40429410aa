"""Flavors from flavors.toml, and whether the nodes (a fake inventory) can host them; hardware
detection (nvidia-smi, Ascend device files) with fake tools."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from core_support import ascend, make_core, message_for, node, nvidia

from opsbot.core.errors import ConfigInvalid
from opsbot.core.flavors import FlavorStatus, builtin_flavors_path, flavor_status, load_flavors
from opsbot.core.hardware import (
    UNKNOWN_ASCEND,
    Device,
    FakeProbe,
    Node,
    detect_ascend,
    detect_nvidia,
    normalise_arch,
    parse_nvidia_smi,
)

ACCELERATED = ["exeml.gpu", "gpu.v100", "gpu.t4", "gpu.any", "ascend.310", "ascend.910"]


def statuses(home: Path, *nodes: Node) -> dict[str, FlavorStatus]:
    core = make_core(home, FakeProbe(nodes))
    return {s.flavor.id: s for s in core.flavor_statuses()}


# -- the built-in file ----------------------------------------------------------------------


def test_builtin_flavors_hold_table_3() -> None:
    flavors = {f.id: f for f in load_flavors()}
    assert builtin_flavors_path().is_file()
    expected = {
        # id: (cpus, memory GiB, accelerator kind, model, count, arch)
        "exeml.cpu": (2, 8, None, None, None, "any"),
        "exeml.gpu": (8, 32, "nvidia", "", 1, "any"),
        "cpu.2u8g": (2, 8, None, None, None, "any"),
        "gpu.v100": (8, 64, "nvidia", "V100", 1, "any"),
        "gpu.t4": (8, 32, "nvidia", "T4", 1, "any"),
        "ascend.310": (3, 6, "ascend", "310", 1, "aarch64"),
        "ascend.910": (24, 96, "ascend", "910", 1, "any"),
        "ascend.910x8": (192, 720, "ascend", "910", 8, "any"),
    }
    for fid, (cpus, mem, kind, model, n, arch) in expected.items():
        f = flavors[fid]
        acc = f.accelerator
        got = (f.cpus, f.memory_gib, acc and acc.kind, acc and acc.model, acc and acc.count)
        assert got == (cpus, mem, kind, model, n), fid
        assert f.arch == arch, fid
        assert f.name, fid
    assert flavors["exeml.cpu"].exeml_only and flavors["exeml.gpu"].exeml_only
    assert not any(f.exeml_only for fid, f in flavors.items() if not fid.startswith("exeml"))
    assert all("custom" in f.allows for fid, f in flavors.items() if not fid.startswith("exeml"))


# -- availability on fake nodes -------------------------------------------------------------


def test_cpu_only_node(home: Path) -> None:
    found = statuses(home, node("cpu-1", cpus=8, memory_gib=32))
    assert found["cpu.2u8g"].available and found["cpu.2u8g"].reason == ""
    assert found["exeml.cpu"].available
    for fid in ACCELERATED:
        assert not found[fid].available, fid
        assert "NVIDIA" in found[fid].reason or "Ascend" in found[fid].reason, fid
    assert "needs 1 x NVIDIA V100, the node has 0" in found["gpu.v100"].reason
    assert "needs aarch64 CPUs, the node is x86_64" in found["ascend.310"].reason


def test_every_flavor_stays_listed(home: Path) -> None:
    found = statuses(home, node())
    assert set(found) == {f.id for f in load_flavors()}


def test_node_with_a_v100(home: Path) -> None:
    found = statuses(
        home, node("gpu-1", cpus=16, memory_gib=64, devices=[nvidia("Tesla V100-SXM2-32GB")])
    )
    assert found["gpu.v100"].available, found["gpu.v100"].reason
    assert found["gpu.any"].available
    assert found["exeml.gpu"].available
    assert not found["gpu.t4"].available
    assert "T4" in found["gpu.t4"].reason
    assert not found["ascend.910"].available


def test_gpu_model_matched_without_case(home: Path) -> None:
    found = statuses(home, node(devices=[nvidia("tesla t4")]))
    assert found["gpu.t4"].available
    assert not found["gpu.v100"].available


def test_arm_node_with_ascend_310(home: Path) -> None:
    found = statuses(
        home, node("atlas", cpus=8, memory_gib=16, arch="aarch64", devices=[ascend("Ascend 310")])
    )
    assert found["ascend.310"].available, found["ascend.310"].reason
    assert not found["ascend.910"].available
    assert "910" in found["ascend.910"].reason
    assert not found["gpu.v100"].available


def test_ascend_310_needs_an_arm_node(home: Path) -> None:
    found = statuses(home, node(arch="x86_64", devices=[ascend("Ascend 310")]))
    assert not found["ascend.310"].available
    assert "aarch64" in found["ascend.310"].reason


def test_ascend_of_unknown_model_matches_any_ascend_flavor(home: Path) -> None:
    found = statuses(
        home,
        node(cpus=32, memory_gib=128, arch="aarch64", devices=[ascend(UNKNOWN_ASCEND)]),
    )
    assert found["ascend.310"].available
    assert found["ascend.910"].available


def test_eight_ascend_910_need_eight_chips(home: Path) -> None:
    chips = [ascend("Ascend 910B", i) for i in range(8)]
    big = node("npu-8", cpus=192, memory_gib=1024, devices=chips)
    small = node("npu-4", cpus=192, memory_gib=1024, devices=chips[:4])
    assert statuses(home, big)["ascend.910x8"].available
    reason = statuses(home, small)["ascend.910x8"].reason
    assert "needs 8 x Ascend 910, the node has 4" in reason


def test_too_little_memory_is_a_reason(home: Path) -> None:
    # Memory counts twice (the default overcommit): 16 GiB offers 32, a V100 flavor needs 64.
    found = statuses(home, node(cpus=16, memory_gib=16, devices=[nvidia("V100")]))
    assert not found["gpu.v100"].available
    assert "needs 64 GiB, the node offers 32.0 GiB" in found["gpu.v100"].reason


def test_several_nodes_one_enough(home: Path) -> None:
    found = statuses(home, node("cpu-1"), node("gpu-1", devices=[nvidia("T4")]))
    assert found["gpu.t4"].available
    reason = found["gpu.v100"].reason
    assert "cpu-1:" in reason and "gpu-1:" in reason


def test_flavor_status_with_no_nodes() -> None:
    flavor = next(f for f in load_flavors() if f.id == "cpu.2u8g")
    assert flavor_status(flavor, []) == FlavorStatus(flavor, False, "no nodes are known")
    assert flavor_status(flavor, [node()]).available


def test_status_as_dict(home: Path) -> None:
    found = statuses(home, node())
    data = found["gpu.t4"].as_dict()
    assert data["id"] == "gpu.t4"
    assert data["name"] == "CPU: 8 vCPUs | 32 GiB GPU: 1 x T4"
    assert data["available"] is False
    assert data["reason"]
    assert data["accelerator"] == {"kind": "nvidia", "model": "T4", "count": 1}
    assert found["cpu.2u8g"].as_dict()["accelerator"] is None


# -- hardware detection ---------------------------------------------------------------------


def test_parse_nvidia_smi() -> None:
    text = "0, Tesla V100-SXM2-32GB\n1, NVIDIA H100 80GB HBM3\n\nNo devices were found\n"
    assert parse_nvidia_smi(text) == [
        Device("nvidia", "Tesla V100-SXM2-32GB", 0),
        Device("nvidia", "NVIDIA H100 80GB HBM3", 1),
    ]
    assert parse_nvidia_smi("") == []
    assert parse_nvidia_smi("index, name\nx, T4") == []


def fake_tool(path: Path, script: str) -> str:
    path.write_text("#!/bin/sh\n" + script)
    os.chmod(path, 0o755)
    return str(path)


def test_detect_nvidia_runs_nvidia_smi(tmp_path: Path) -> None:
    smi = fake_tool(tmp_path / "nvidia-smi", 'echo "0, Tesla T4"\necho "1, Tesla T4"\n')
    assert detect_nvidia(smi) == [Device("nvidia", "Tesla T4", 0), Device("nvidia", "Tesla T4", 1)]


def test_detect_nvidia_failing_or_absent(tmp_path: Path) -> None:
    failing = fake_tool(tmp_path / "nvidia-smi", "echo 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    assert detect_nvidia(failing) == []
    assert detect_nvidia(str(tmp_path / "absent")) == []


def test_detect_ascend_from_device_files(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    dev.mkdir()
    for name in ("davinci1", "davinci0", "davinci_manager", "davinciX"):
        (dev / name).touch()
    npu_smi = fake_tool(tmp_path / "npu-smi", 'echo "| 0  910B  | OK |"\n')
    assert detect_ascend(dev, npu_smi) == [
        Device("ascend", "Ascend 910B", 0),
        Device("ascend", "Ascend 910B", 1),
    ]
    # Without npu-smi the model is unknown, which matches any Ascend flavor.
    assert detect_ascend(dev, str(tmp_path / "absent")) == [
        Device("ascend", UNKNOWN_ASCEND, 0),
        Device("ascend", UNKNOWN_ASCEND, 1),
    ]


def test_detect_ascend_without_devices(tmp_path: Path) -> None:
    assert detect_ascend(tmp_path) == []
    assert detect_ascend(tmp_path / "missing") == []


@pytest.mark.parametrize(
    ("machine", "arch"),
    [("x86_64", "x86_64"), ("AMD64", "x86_64"), ("arm64", "aarch64"), ("aarch64", "aarch64")],
)
def test_normalise_arch(machine: str, arch: str) -> None:
    assert normalise_arch(machine) == arch


# -- a bad flavors file ---------------------------------------------------------------------


def flavors_error(path: Path) -> ConfigInvalid:
    with pytest.raises(ConfigInvalid) as info:
        load_flavors(path)
    return info.value


GOOD = """
[[flavor]]
id = "cpu.small"
name = "CPU: 1 vCPU | 2 GiB"
cpus = 1
memory_gib = 2
"""


def test_a_file_of_ones_own(tmp_path: Path) -> None:
    path = tmp_path / "flavors.toml"
    path.write_text(GOOD)
    (flavor,) = load_flavors(path)
    assert (flavor.id, flavor.cpus, flavor.allows, flavor.arch) == (
        "cpu.small",
        1,
        ["custom"],
        "any",
    )


def test_missing_flavors_file(tmp_path: Path) -> None:
    path = tmp_path / "flavors.toml"
    message_for(flavors_error(path), str(path), "cannot read")


def test_flavors_file_not_toml(tmp_path: Path) -> None:
    path = tmp_path / "flavors.toml"
    path.write_text("[[flavor]\nid=")
    message_for(flavors_error(path), str(path), "not valid TOML")


def test_flavors_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "flavors.toml"
    path.write_bytes(b"\xff\xfe[[flavor]]\n")
    message_for(flavors_error(path), str(path), "UTF-8")


@pytest.mark.parametrize("content", ["", "flavor = 3", "[flavor]\nid = 'x'", "flavor = []"])
def test_flavors_file_without_flavors(tmp_path: Path, content: str) -> None:
    path = tmp_path / "flavors.toml"
    path.write_text(content)
    message_for(flavors_error(path), str(path), "[[flavor]]")


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("cpus = 0", "cpus"),
        ("memory_gib = -1", "memory_gib"),
        ('arch = "sparc"', "arch"),
        ('allows = ["everything"]', "allows.0"),
        ("allows = []", "allows"),
        ('accelerator = { kind = "tpu" }', "accelerator.kind"),
        ('colour = "red"', "colour"),
    ],
)
def test_flavor_with_a_bad_field(tmp_path: Path, line: str, key: str) -> None:
    path = tmp_path / "flavors.toml"
    field = line.split(" = ")[0]
    lines = [ln for ln in GOOD.splitlines() if not ln.startswith(field + " ")]
    path.write_text("\n".join([*lines, line]) + "\n")
    error = flavors_error(path)
    assert [e.field for e in error.errors] == [f"flavors.toml: flavor[0].{key}"]
    assert error.errors[0].message


def test_flavor_ids_unique(tmp_path: Path) -> None:
    path = tmp_path / "flavors.toml"
    path.write_text(GOOD + GOOD)
    message_for(flavors_error(path), "flavors.toml: flavor cpu.small", "unique")


def test_core_reads_the_flavors_file_of_its_home(home: Path) -> None:
    (home / "flavors.toml").write_text(GOOD)
    assert [s.flavor.id for s in make_core(home).flavor_statuses()] == ["cpu.small"]


def test_core_refuses_a_bad_flavors_file(home: Path) -> None:
    (home / "flavors.toml").write_text("[[flavor]]\nid = 'x'\n")
    with pytest.raises(ConfigInvalid) as info:
        make_core(home)
    assert {e.field for e in info.value.errors} >= {
        "flavors.toml: flavor[0].name",
        "flavors.toml: flavor[0].cpus",
    }
    assert not (home / "opsbot.db").exists()


def test_config_names_another_flavors_file(home: Path, tmp_path: Path) -> None:
    other = tmp_path / "site-flavors.toml"
    other.write_text(GOOD.replace("cpu.small", "site.cpu"))
    (home / "config.toml").write_text(f"flavors_file = {str(other)!r}\n")
    core = make_core(home)
    assert [f.id for f in core.flavors] == ["site.cpu"]
