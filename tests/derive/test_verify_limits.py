"""``verify`` within limits: lines streamed as checks finish, exit codes 0/1/2/3, a check that
runs out of memory or time reported as a FAIL line (no traceback) while the run goes on,
``--timeout`` SKIP lines, checks sized to ``--memory`` (smaller batch or channels, said in the
line), the address-space guard, and the memory-lean check helpers agreeing with the plain ones.
"""

from __future__ import annotations

import dataclasses
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks.torchvision_models import torchvision_models
from derive.frontend.spec import mlp_spec
from derive.layers import LAYER_KINDS
from derive.pipeline import derive, verify
from derive.verify import limits as limits_module
from derive.verify.checklist import (
    LINE_WIDTH,
    Check,
    VerifyReport,
    group_checks,
    line_writer,
    sensitivity_check,
)
from derive.verify.limits import GIB, Limits, address_space_limit, is_out_of_memory
from derive.verify.numeric import completeness_report, equivariant_dimension
from derive.verify.reference import ReferenceLinear, apply_map
from derive.verify.sized import (
    FULL,
    SETTINGS,
    group_bytes,
    group_error,
    sensitivity_bytes,
    sensitivity_errors,
    with_channels,
)
from nfn_runtime import (
    equivariance_error,
    invariance_error,
    outside_group_kinds,
    random_weight_space,
    sample_outside_group,
    sensitivity_error,
)

SMALL = ("verify", "--mlp", "2,3,2", "--activation", "tanh", "--samples", "1")


@pytest.fixture(scope="module")
def small():
    return derive(mlp_spec((2, 3, 2), "tanh"))


def _kind_with_checks(monkeypatch, name, checks):
    """Replace the checks of the registered layer kind ``name`` for one test."""
    monkeypatch.setitem(LAYER_KINDS, name, dataclasses.replace(LAYER_KINDS[name], checks=checks))


def _no_traceback(out: str, err: str) -> None:
    assert "Traceback" not in out and "Traceback" not in err


# ---------------------------------------------------------------------------------------------
# Streaming
# ---------------------------------------------------------------------------------------------


def test_sink_sees_every_check_as_it_is_added(small):
    seen: list[tuple[Check, int]] = []
    report = verify(small, samples=1, only=["symbolic", "invariant"], sink=None)
    streamed = VerifyReport(sink=lambda check: seen.append((check, len(streamed.checks))))
    for check in report.checks:
        streamed.record(check)
    assert [c for c, _ in seen] == report.checks
    # each check reaches the sink right after it is appended, not at the end
    assert [n for _, n in seen] == list(range(1, len(report.checks) + 1))


def test_lines_are_printed_before_the_run_ends(cli, capsys, monkeypatch):
    """When the invariant kind's checks start, every earlier line is on stdout already."""
    printed_before: list[str] = []

    def spy(derivation, report, options):
        printed_before.append(capsys.readouterr().out)
        report.add("spy check", True, "ran after the linear checks")

    _kind_with_checks(monkeypatch, "invariant", spy)
    code, out, err = cli(*SMALL, "--only", "symbolic,linear,invariant")
    assert code == 0, out + err
    early = printed_before[0]
    assert early.startswith("Verifying the generated layers of mlp_2_3_2")
    for name in ("symbolic equivariance", "linear matches reference", "completeness"):
        assert f"  PASS  {name.ljust(LINE_WIDTH)}  " in early
    assert "spy check" not in early
    assert out.endswith(
        "  PASS  "
        + "spy check".ljust(LINE_WIDTH)
        + "  ran after the linear checks\n\nall checks passed\n"
    )


def test_line_writer_flushes_each_line():
    class Stream:
        def __init__(self):
            self.events: list[str] = []

        def write(self, text):
            self.events.append("write " + text)

        def flush(self):
            self.events.append("flush")

    stream = Stream()
    sink = line_writer(stream)  # type: ignore[arg-type]
    sink(Check("a", True, "fine"))
    sink(Check("b", False, "broken"))
    assert stream.events == [
        "write   PASS  " + "a".ljust(LINE_WIDTH) + "  fine\n",
        "flush",
        "write   FAIL  " + "b".ljust(LINE_WIDTH) + "  broken\n",
        "flush",
    ]


def test_report_stays_a_value():
    report = VerifyReport()
    report.add("first", True, "ok")
    report.add("second", False, "bad")
    report.skip("linear", "not run: --timeout reached")
    assert not report.ok and report.exit_code == 1
    assert [c.status for c in report.checks] == ["PASS", "FAIL", "SKIP"]
    assert report.text().splitlines() == [
        "  PASS  first   ok",
        "  FAIL  second  bad",
        "  SKIP  linear  not run: --timeout reached",
        "",
        "1 check(s) FAILED, 1 group(s) of checks not run",
    ]


# ---------------------------------------------------------------------------------------------
# Exit codes
# ---------------------------------------------------------------------------------------------


def test_exit_0_when_every_check_passes(cli):
    code, out, err = cli(*SMALL, "--only", "symbolic")
    assert code == 0 and err == ""
    assert out.endswith("\nall checks passed\n")


def test_exit_1_when_a_check_fails(cli, monkeypatch):
    _kind_with_checks(
        monkeypatch, "invariant", lambda d, report, o: report.add("forced", False, "wrong")
    )
    code, out, _ = cli(*SMALL, "--only", "symbolic,invariant")
    assert code == 1
    assert "  FAIL  " + "forced".ljust(LINE_WIDTH) + "  wrong\n" in out
    assert out.endswith("\n1 check(s) FAILED\n")


@pytest.mark.parametrize(
    "extra, fragment",
    [(("--memory", "0"), "--memory"), (("--timeout", "-1"), "--timeout")],
)
def test_exit_2_on_bad_limits(cli, one_line_error, extra, fragment):
    code, out, err = cli(*SMALL, *extra)
    one_line_error(code, out, err, [fragment])


@pytest.mark.parametrize(
    "error",
    [
        MemoryError(),
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
            "memory: you tried to allocate 4932501504 bytes. Error code 12 (Cannot allocate memory)"
        ),
    ],
)
def test_exit_3_when_a_check_runs_out_of_memory(cli, monkeypatch, error):
    """A check raising an allocation failure gets a FAIL line; the next checks still run."""

    def greedy(derivation, report, options):
        report.add("before", True, "fine")
        report.run("greedy check", lambda: (_ for _ in ()).throw(error))
        report.add("after", True, "still runs")

    _kind_with_checks(monkeypatch, "linear", greedy)
    code, out, err = cli(*SMALL, "--only", "linear,invariant")
    _no_traceback(out, err)
    assert code == 3, out + err
    lines = out.splitlines()
    failed = next(line for line in lines if "greedy check" in line)
    assert failed.startswith("  FAIL  greedy check") and "out of memory (" in failed
    assert "--memory 8 GB" in failed
    if isinstance(error, RuntimeError):
        assert "an allocation of 4.59 GB failed" in failed
    names = [line.split()[1] for line in lines if line.startswith("  PASS")]
    assert names[:2] == ["before", "after"] and "invariant" in names  # the run went on
    assert out.endswith("\n1 check(s) ran out of memory or time\n")


def test_out_of_memory_outside_a_single_check_fails_its_group(cli, monkeypatch):
    def greedy(derivation, report, options):
        raise MemoryError

    _kind_with_checks(monkeypatch, "linear", greedy)
    code, out, err = cli(*SMALL, "--only", "linear,invariant")
    _no_traceback(out, err)
    assert code == 3
    assert "  FAIL  " + "linear".ljust(LINE_WIDTH) + "  out of memory (MemoryError;" in out
    assert "invariant sensitivity" in out


def test_a_failed_check_outranks_running_out(cli, monkeypatch):
    def mixed(derivation, report, options):
        report.add("wrong", False, "a real failure")
        report.run("greedy", lambda: (_ for _ in ()).throw(MemoryError()))

    _kind_with_checks(monkeypatch, "linear", mixed)
    code, out, _ = cli(*SMALL, "--only", "linear")
    assert code == 1
    assert out.endswith("\n1 check(s) FAILED, 1 check(s) ran out of memory or time\n")


def test_other_errors_are_not_taken_for_out_of_memory():
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    report = VerifyReport()
    with pytest.raises(RuntimeError, match="shape mismatch"):
        report.run("bug", lambda: (_ for _ in ()).throw(RuntimeError("shape mismatch")))


# ---------------------------------------------------------------------------------------------
# --timeout
# ---------------------------------------------------------------------------------------------


def test_tiny_timeout_skips_every_group(cli):
    code, out, err = cli(*SMALL, "--timeout", "0.001")
    _no_traceback(out, err)
    assert code == 3
    skipped = [line for line in out.splitlines() if line.startswith("  SKIP")]
    groups = ["symbolic", "network", "linear", "invariant", "polynomial", "polynomial-invariant"]
    assert [line.split()[1] for line in skipped] == groups
    assert all(line.endswith("  not run: --timeout reached") for line in skipped)
    assert out.endswith("\n6 group(s) of checks not run\n")


def test_timeout_keeps_finished_lines_and_interrupts_the_running_check(cli, monkeypatch):
    def slow(derivation, report, options):
        report.add("quick", True, "done in time")
        report.run("sleeper", lambda: time.sleep(30))
        report.run("never", lambda: report.add("never", True, "not reached"))

    _kind_with_checks(monkeypatch, "linear", slow)
    start = time.monotonic()
    code, out, err = cli(*SMALL, "--only", "symbolic,linear,invariant", "--timeout", "1.5")
    assert time.monotonic() - start < 20  # the sleeper was interrupted
    _no_traceback(out, err)
    assert code == 3
    lines = out.splitlines()
    assert any(line.startswith("  PASS  symbolic equivariance") for line in lines)
    assert any(line.startswith("  PASS  quick") for line in lines)
    sleeper = next(line for line in lines if "sleeper" in line)
    assert sleeper.startswith("  FAIL  sleeper") and "out of time (--timeout reached" in sleeper
    assert "never" not in out
    assert "  SKIP  " + "linear (rest)".ljust(LINE_WIDTH) + "  not run: --timeout reached" in out
    assert "  SKIP  " + "invariant".ljust(LINE_WIDTH) + "  not run: --timeout reached" in out


def test_timeout_alarm_is_cleared_after_the_run(small):
    verify(small, samples=1, only=["symbolic"], timeout=60)
    assert resource.getrlimit(resource.RLIMIT_AS)[0] == resource.RLIM_INFINITY
    import signal

    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


# ---------------------------------------------------------------------------------------------
# --memory: checks sized to the budget, the address-space guard
# ---------------------------------------------------------------------------------------------


def _budget_for(monkeypatch, need: int) -> Limits:
    """Limits leaving exactly ``need`` bytes (the process's own size taken as zero)."""
    monkeypatch.setattr(limits_module, "resident_bytes", lambda: 0)
    return Limits(memory=need)


def test_group_checks_shrink_the_setting_to_fit(small, build, monkeypatch):
    derivation, linear_cls, _ = build((2, 3, 2), "tanh")
    layout = derivation.space.to_layout()
    smallest = SETTINGS[-1]
    need = group_bytes(layout, smallest, torch.float64, invariant=False)
    report = VerifyReport(limits=_budget_for(monkeypatch, need))
    generator = torch.Generator().manual_seed(0)
    group_checks(report, "eq ({dtype})", linear_cls(2, 3), layout, 2, generator)
    float64 = report.checks[0]
    assert float64.ok, float64.detail
    assert "; on batch 1, 1 -> 1 channels: batch 2, 2 -> 3 channels needs ~" in float64.detail
    assert "left of --memory" in float64.detail
    assert float64.detail.startswith("max relative error")
    assert "(bound 1e-10)" in float64.detail  # the bound does not change


def test_a_check_that_fits_no_setting_fails_for_the_budget(small, build, monkeypatch):
    derivation, linear_cls, _ = build((2, 3, 2), "tanh")
    layout = derivation.space.to_layout()
    report = VerifyReport(limits=_budget_for(monkeypatch, 16))
    group_checks(report, "eq ({dtype})", linear_cls(2, 3), layout, 1, torch.Generator())
    assert [c.status for c in report.checks] == ["FAIL", "FAIL"]
    assert all(c.resource for c in report.checks)
    assert report.checks[0].detail.startswith("out of the memory budget: needs ~")
    assert report.exit_code == 3


def test_verify_with_a_budget_passes_and_says_nothing_when_everything_fits(small):
    report = verify(small, samples=1, memory=64)
    assert report.ok, report.text()
    assert not any("channels" in c.detail for c in report.checks)


def test_address_space_limit_turns_a_large_allocation_into_an_error():
    limits = Limits(memory=limits_module.resident_bytes() + 256 * (1 << 20))
    before = resource.getrlimit(resource.RLIMIT_AS)
    with address_space_limit(limits):
        with pytest.raises((MemoryError, RuntimeError)) as caught:
            torch.ones(GIB // 4, dtype=torch.float64)  # 2 GB
        assert is_out_of_memory(caught.value)
        small_tensor = torch.ones(1000) @ torch.ones(1000)  # small work still runs
        assert float(small_tensor) == 1000.0
    assert resource.getrlimit(resource.RLIMIT_AS) == before


# ---------------------------------------------------------------------------------------------
# The memory-lean helpers compute what the plain ones compute
# ---------------------------------------------------------------------------------------------


def test_reference_output_by_tensor_equals_the_sum_over_all_maps(small):
    """The reference computed one output tensor at a time (map by map, accumulated in place)
    equals the plain sum of every map's einsum."""
    reference = ReferenceLinear(small.basis, 2, 3).double()
    layout = small.space.to_layout()
    x = random_weight_space(layout, 2, 2, torch.float64, torch.Generator().manual_seed(0))
    named = x.named(layout)
    with torch.no_grad():
        whole = reference(x).named(layout)
        for tensor in small.space.tensors:
            plain = sum(
                apply_map(small.space, m, c, named[m.input])
                for m, c in zip(reference.maps, reference.coefficients)
                if m.output == tensor.name
            ) + sum(
                apply_map(small.space, m, c, None)
                for m, c in zip(reference.constant_maps, reference.constants)
                if m.output == tensor.name
            )
            chunked = reference.output(named, tensor.name)
            torch.testing.assert_close(chunked, plain, rtol=1e-13, atol=1e-13)
            torch.testing.assert_close(whole[tensor.name], plain, rtol=1e-13, atol=1e-13)


def test_chunked_agreement_check_catches_a_wrong_coefficient(small, monkeypatch):
    """The per-tensor comparison fails when one output tensor of the generated layer is off."""
    import derive.layers.linear as linear_kind

    original = ReferenceLinear.output

    def off(self, named, name):
        value = original(self, named, name)
        return value * 1.001 if name == small.space.tensors[-1].name else value

    monkeypatch.setattr(ReferenceLinear, "output", off)
    report = VerifyReport()
    cls = linear_kind.generated_class(small, "linear", linear_kind.LayerOptions(budget="dense"))
    linear_kind._matches_reference(small, cls, report)
    assert not report.ok and report.checks[0].name == "linear matches reference"


@pytest.mark.parametrize("invariant", [False, True])
def test_lean_group_error_equals_the_runtime_one(build, invariant):
    derivation, linear_cls, invariant_cls = build((2, 3, 3, 2), "relu")
    layout = derivation.space.to_layout()
    torch.manual_seed(0)
    layer = (invariant_cls if invariant else linear_cls)(2, 3).double()
    plain = (invariance_error if invariant else equivariance_error)(
        layer, layout, n_samples=3, channels=2, generator=torch.Generator().manual_seed(5)
    )
    lean = group_error(
        layer, layout, 3, FULL, torch.float64, torch.Generator().manual_seed(5), invariant
    )
    assert lean == pytest.approx(plain, rel=1e-9, abs=1e-300)
    assert lean < 1e-10


def test_sensitivity_errors_equal_the_runtime_ones(build):
    derivation, linear_cls, _ = build((2, 3, 3, 2), "relu")
    layout = derivation.space.to_layout()
    layer = linear_cls(2, 3).double()
    generator = torch.Generator().manual_seed(2)
    transforms = [
        sample_outside_group(layout, kind, generator) for kind in outside_group_kinds(layout)
    ]
    x = random_weight_space(layout, 2, 2, torch.float64, torch.Generator().manual_seed(3))
    lean = sensitivity_errors(layer, layout, transforms, x)
    plain = [
        sensitivity_error(layer, layout, t, channels=2, generator=torch.Generator().manual_seed(3))
        for t in transforms
    ]
    assert lean == pytest.approx(plain, rel=1e-9)


def test_with_channels_rebuilds_generated_and_reference_layers(small, build):
    _, linear_cls, _ = build((2, 3, 2), "tanh")
    generated = with_channels(linear_cls(2, 3).double(), 1, 2)
    assert (generated.in_channels, generated.out_channels) == (1, 2)
    assert next(generated.parameters()).dtype == torch.float64
    reference = with_channels(ReferenceLinear(small.basis, 2, 3), 1, 1)
    assert isinstance(reference, ReferenceLinear) and reference.out_channels == 1
    same = linear_cls(2, 3)
    assert with_channels(same, 2, 3) is same


class _Doubling(torch.nn.Module):
    """An over-constrained "layer": 2 x, which commutes with every transform outside the group."""

    in_channels = out_channels = 1

    def forward(self, ws):
        return ws * 2.0

    def with_channels(self, c_in, c_out):
        assert (c_in, c_out) == (1, 1)
        return self


def test_sensitivity_on_the_smallest_setting_still_catches_an_over_constrained_layer(
    small, monkeypatch
):
    layout = small.space.to_layout()
    smallest = SETTINGS[-1]
    report = VerifyReport(
        limits=_budget_for(monkeypatch, sensitivity_bytes(layout, smallest, False))
    )
    reference = ReferenceLinear(small.basis, 2, 3)
    sensitivity_check(layout, _Doubling(), reference, "doubling", report, torch.Generator())
    (check,) = report.checks
    assert not check.ok and not check.resource
    assert check.detail.startswith("commutes with decoupled_permutation on h1")
    assert "; on batch 1, 1 -> 1 channels: " in check.detail
    honest = VerifyReport(limits=report.limits)
    sensitivity_check(layout, reference, reference, "complete", honest, torch.Generator())
    assert honest.ok, honest.text()


# ---------------------------------------------------------------------------------------------
# Real size (slow tier): torchvision's VGG-11 and ResNet-18 at 224 x 224, every check
# ---------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vgg11", "resnet18"])
def test_verify_completes_at_real_size(name):
    """``nfn-derive verify`` on a real network at 224 x 224 with the default budget: every check
    passes (exit 0) in under 15 minutes, with a peak resident set under 8 GiB. torchvision is
    imported through the operator declarations of ``benchmarks/torchvision_models.py`` (the
    same work-around as ``test_real_models.py``)."""
    if torchvision_models() is None:
        pytest.skip("torchvision is not installed")
    command = [sys.executable, "-m", "derive.cli", "verify", "--torch"]
    command += [f"benchmarks.torchvision_models:{name}", "--input-shape", "3,224,224"]
    start = time.monotonic()
    result = subprocess.run(
        command, check=False, cwd=ROOT, capture_output=True, text=True, timeout=1800
    )
    elapsed = time.monotonic() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.endswith("\nall checks passed\n")
    assert elapsed < 15 * 60, f"{elapsed:.0f} s"
    assert peak < 8 * GIB, f"peak resident set {peak / GIB:.2f} GiB"


@pytest.mark.parametrize(
    "activation, permute",
    [("relu", "hidden"), ("tanh", "hidden"), ("identity", "hidden"), ("gelu", "all")],
)
def test_fast_null_dimensions_equal_the_direct_ones(activation, permute):
    """completeness_report's null dimensions (a product of two small ones where the tensors
    share no acted-on space; diagonal generators applied exactly first elsewhere) equal the
    rank of each whole block's constraint."""
    derivation = derive(mlp_spec((2, 3, 3, 2), activation, permute=permute))
    space = derivation.space
    report = {c.key: c.null_space for c in completeness_report(space, {})}
    for t_out in space.tensors:
        for t_in in space.tensors:
            direct = equivariant_dimension(space, t_out, t_in)
            assert report[f"{t_out.name}<-{t_in.name}"] == direct
