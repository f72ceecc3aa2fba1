"""Host class: what decides speed, read from the CPU's own description, so results of different CPUs never mix."""

import os

import pytest

from signflow_zoo.common.environment import cpu_info, environment, host_class, isa_tier, usable_cpus

ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC 7B13
stepping\t: 0
flags\t\t: fpu sse sse2 avx avx2 fma bmi2

processor\t: 1
vendor_id\t: AuthenticAMD
"""
ZEN5 = ZEN3.replace("cpu family\t: 25", "cpu family\t: 26").replace("model\t\t: 1\n", "model\t\t: 2\n").replace(
    "avx2 fma bmi2", "avx2 fma avx512f avx512bw avx512_vnni avx512_bf16 avx_vnni")
SPR = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8480+
stepping\t: 8
flags\t\t: avx2 fma avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8 avx512_fp16
"""


@pytest.mark.parametrize("text,expected", [
    (ZEN3, "amd-f25m1-avx2-2cpu"), (ZEN5, "amd-f26m2-avx512bf16-2cpu"), (SPR, "intel-f6m143-amx-2cpu"),
])
def test_host_class_tells_cpu_kinds_apart_that_share_a_model_name(text, expected):
    info = cpu_info(text)
    assert host_class(info, cpus=2, gpu="none") == expected


def test_the_same_model_name_with_another_isa_is_another_class():
    assert cpu_info(ZEN3)["model_name"] == cpu_info(ZEN5)["model_name"]
    assert host_class(cpu_info(ZEN3), 2, "none") != host_class(cpu_info(ZEN5), 2, "none")


def test_cpu_flags_keep_only_what_decides_kernels_in_a_stable_order():
    assert cpu_info(ZEN3)["flags"] == "avx2 fma"
    assert isa_tier(cpu_info(SPR)["flags"]) == "amx" and isa_tier("sse sse2") == "base"


def test_usable_cpus_and_gpu_enter_the_class():
    assert host_class(cpu_info(ZEN3), 1.5, "NVIDIA H100 80GB HBM3") == "amd-f25m1-avx2-1p5cpu-nvidia-h100-80gb-hbm3"
    assert 0 < usable_cpus() <= (os.cpu_count() or 1)


@pytest.mark.slow  # runs a bench: out of the fast loop, still in CI
def test_every_result_records_its_host_class_and_flags():
    env = environment()
    assert env["host_class"] == host_class()
    assert env["cpu_flags"] == cpu_info()["flags"]
    assert float(env["cpus_usable"]) == usable_cpus()
