"""Benchmark helpers: pass counting against hand-made loops, the overhead formula, precision comparison."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cl_explain import bench, explain
from cl_explain.bench import report
from cl_explain.bench.jobs import Failure, Job, JobResult, Measured, NotApplicable, Rates, run_job
from cl_explain.bench.report import Entry, ModelSection
from cl_explain.data.pairs import Pair
from cl_explain.explainers.base import bf16_supported, list_methods
from cl_explain.explainers.occlusion import occlusion_grid
from cl_explain.metrics import METRICS
from cl_explain.models.similarity import IMAGENET_MEAN, IMAGENET_STD, SimilarityModel

import helpers

SIDE = 16


def tiny_model(seed: int = 0) -> SimilarityModel:
    torch.manual_seed(seed)
    backbone = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(), nn.Conv2d(8, 6, 3, stride=2, padding=1, bias=False)
    )
    head = nn.Sequential(nn.Linear(6, 8, bias=False), nn.Tanh(), nn.Linear(8, 5, bias=False))
    return SimilarityModel(backbone, head, (IMAGENET_MEAN, IMAGENET_STD))


def tiny_pairs(n: int = 2, seed: int = 1) -> list[Pair]:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(2 * n, 3, 4, 4, generator=g)
    x = F.interpolate(coarse, size=(SIDE, SIDE), mode="bilinear", align_corners=False).clamp(0, 1)
    return [Pair(x[2 * i : 2 * i + 1], x[2 * i + 1 : 2 * i + 2], pair_id=f"p{i}") for i in range(n)]


# ------------------------------------------------------------------------------------ pass counting


def test_counter_counts_exactly_what_a_hand_made_loop_does():
    model = tiny_model()
    x = torch.rand(7, 3, SIDE, SIDE)
    with bench.count_passes(model) as count:
        with torch.no_grad():
            model.embed(x[:3])  # 3 forward
            model.embed(x[:5])  # 5 forward
        a = x[:2].clone().requires_grad_(True)
        torch.autograd.grad(model.embed(a).sum(), a)  # 2 forward + backward
        b = x[:4].clone().requires_grad_(True)
        model.embed(b)  # 4 forward with a graph, never differentiated
        with torch.inference_mode():
            model.embed(x[:1])  # 1 forward
    assert (count.forward, count.forward_grad, count.backward) == (9, 6, 2)
    assert count.forward_only == 13 and count.total_forward == 15
    assert dict(count.batches) == {(3, False): 1, (5, False): 1, (2, True): 1, (4, True): 1, (1, False): 1}


def test_head_only_gradient_is_not_a_backbone_backward():
    """CAM methods differentiate pooling + head only: no backward pass through the backbone."""
    model = tiny_model()
    x = torch.rand(2, 3, SIDE, SIDE)
    with bench.count_passes(model) as count:
        with torch.no_grad():
            fmap = model.features(x)
        fmap = fmap.requires_grad_(True)
        torch.autograd.grad(model.embed_features(fmap).sum(), fmap)
    assert (count.forward, count.forward_grad, count.backward) == (2, 0, 0)


def test_counter_hook_is_removed_even_on_error():
    model = tiny_model()
    with pytest.raises(RuntimeError, match="boom"):
        with bench.count_passes(model):
            assert len(model.backbone._forward_hooks) == 1
            raise RuntimeError("boom")
    assert len(model.backbone._forward_hooks) == 0
    with pytest.raises(TypeError, match="backbone"):
        with bench.count_passes(nn.Linear(2, 2)):
            pass


def test_run_method_counts_the_occlusion_grid_and_the_pair():
    """Occlusion: every window of both images + f(x1), f(x2) once + explain's score (2 images)."""
    model, pairs = tiny_model(), tiny_pairs(2)
    run = bench.run_method(model, pairs, "occlusion", {"window": 6, "stride": 2}, batch_size=16)
    windows = len(occlusion_grid(SIDE, SIDE, 6, 2))
    assert windows == 36
    for count in run.counts:
        assert (count.forward, count.forward_grad, count.backward) == (2 * windows + 2 + 2, 0, 0)
    assert len(run.seconds) == 2 and all(s > 0 for s in run.seconds)
    assert run.passes_per_pair.forward == 2 * windows + 4


def test_run_method_counts_gradient_passes():
    """Input x Gradient: x1 and x2 forward with a graph and one backward each, plus explain's score."""
    model, pairs = tiny_model(), tiny_pairs(1)
    count = bench.run_method(model, pairs, "input_x_gradient", batch_size=4).counts[0]
    assert (count.forward, count.forward_grad, count.backward) == (2, 2, 2)


def test_measure_throughput_runs_the_passes_it_claims():
    model = tiny_model()
    images = torch.rand(3, 3, SIDE, SIDE)
    with bench.count_passes(model) as count:
        rate = bench.measure_throughput(model, images, 4, batches=2, warmup=1)
    assert count.forward == 12 and count.backward == 0 and rate > 0 and math.isfinite(rate)
    with bench.count_passes(model) as count:
        bench.measure_throughput(model, images, 5, backward=True, batches=1, warmup=0)
    assert (count.forward_grad, count.backward) == (5, 5)
    with pytest.raises(ValueError, match="batch"):
        bench.measure_throughput(model, images[0, 0], 4)


# ------------------------------------------------------------------------------------ overhead ratio


def test_overhead_ratio_formula():
    count = bench.PassCount(forward=8, forward_grad=6, backward=4)  # 10 forward-only + 4 with backward
    assert bench.ideal_seconds(count, forward_throughput=5.0, train_throughput=2.0) == pytest.approx(10 / 5 + 4 / 2)
    assert bench.overhead_ratio(6.0, count, 5.0, 2.0) == pytest.approx(1.5)
    forward_only = bench.PassCount(forward=20)
    assert bench.overhead_ratio(5.0, forward_only, 4.0) == pytest.approx(1.0)
    assert bench.overhead_ratio(1.0, bench.PassCount(), 4.0) is None
    with pytest.raises(ValueError, match="forward\\+backward"):
        bench.overhead_ratio(1.0, count, 5.0)
    with pytest.raises(ValueError, match="positive"):
        bench.ideal_seconds(forward_only, 0.0)


def test_batch_aware_seconds_times_each_batch_at_its_own_size():
    count = bench.PassCount(forward=18, forward_grad=4, backward=4)
    count.batches.update({(16, False): 1, (1, False): 2, (2, True): 2})
    rates = {(16, False): 8.0, (1, False): 4.0, (2, True): 2.0}
    assert bench.batch_aware_seconds(count, rates) == pytest.approx(16 / 8 + 2 * 1 / 4 + 2 * 2 / 2)
    with pytest.raises(ValueError, match="no throughput"):
        bench.batch_aware_seconds(count, {(16, False): 8.0})


# ------------------------------------------------------------------------------ precision agreement


def test_fp32_against_fp32_agrees_for_methods_and_fails_when_maps_differ():
    model, pairs = tiny_model(), tiny_pairs(2)
    first = bench.run_method(model, pairs, "gradcam", batch_size=4)
    second = bench.run_method(model, pairs, "gradcam", batch_size=4)
    agreement = bench.compare_precision_runs(first, second)
    assert agreement.min_rank_correlation == pytest.approx(1.0) and agreement.max_auc_difference is None
    assert agreement.passed
    shuffled = [
        tuple(
            m.flatten()[torch.randperm(m.numel(), generator=torch.Generator().manual_seed(3))].view_as(m) for m in maps
        )
        for maps in second.outputs
    ]
    worse = bench.compare_precision_runs(first, bench.Run("gradcam", [], [], shuffled))
    assert worse.min_rank_correlation < 0.99 and not worse.passed


def test_fp32_against_fp32_agrees_for_auc_metrics_and_fails_beyond_tolerance():
    model, pairs = tiny_model(), tiny_pairs(2)
    explanations = [explain(model, p.x1, p.x2, "gradcam") for p in pairs]
    options = {"step": 32}
    first = bench.run_metric(model, pairs, explanations, "deletion_conditional", options, batch_size=8)
    second = bench.run_metric(model, pairs, explanations, "deletion_conditional", options, batch_size=8)
    agreement = bench.compare_precision_runs(first, second)
    assert agreement.max_auc_difference == 0.0 and agreement.min_rank_correlation is None and agreement.passed
    shifted = [
        {k: v + (0.02 if k == "deletion_conditional_2" else 0.0) for k, v in values.items()}
        for values in second.outputs
    ]
    worse = bench.compare_precision_runs(first, bench.Run("deletion_conditional", [], [], shifted))
    assert worse.max_auc_difference == pytest.approx(0.02) and not worse.passed
    # the metric's own passes: N+1 curve points per direction + the intact image once per direction
    points = SIDE * SIDE // 32 + 1
    assert first.pairs_per_call == 2 and len(first.counts) == 1  # both pairs scored in one call
    assert first.passes_per_pair.forward == 2 * points + 2 and first.counts[0].forward == 2 * (2 * points + 2)


def test_run_metric_not_applicable_cases():
    model, pairs = tiny_model(), tiny_pairs(1)
    explanation = [explain(model, pairs[0].x1, pairs[0].x2, "occlusion", window=6, stride=2)]
    run = bench.run_metric(model, pairs, explanation, "max_sensitivity")
    assert run.not_applicable and "occlusion" in run.not_applicable and run.seconds == []
    grounding = bench.run_metric(model, pairs, explanation, "pointing_game")
    assert grounding.not_applicable and "masks" in grounding.not_applicable


def test_bf16_status_matches_hardware_support():
    supported, reason = bench.bf16_status("cpu")
    assert supported == bf16_supported(torch.device("cpu"))
    assert isinstance(reason, str) and (supported or reason.startswith("unsupported on this CPU"))


def test_max_rss_is_at_least_the_current_resident_memory():
    status = Path("/proc/self/status")
    if not status.is_file():
        pytest.skip("needs /proc (Linux)")
    current_kib = next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("VmRSS"))
    assert bench.max_rss_mb() >= current_kib / 1024 * 0.99


# --------------------------------------------------------------------------------------- the script


def test_script_covers_every_method_and_metric_and_parses_its_options():
    script = helpers.load_script("benchmark")
    assert set(script.METHODS) == set(list_methods())
    assert set(script.METRIC_NAMES) == set(METRICS)
    assert set(script.VIT_METHODS) == {"token_occlusion", "attention_rollout"}
    assert (
        "max_sensitivity" not in script.PERTURBATION_METRICS and "deletion_conditional" in script.PERTURBATION_METRICS
    )
    for model in script.PROFILES.values():
        for profile in model.values():
            assert set(profile["methods"]) <= set(list_methods())
    args = script.parse_args(["--quick", "--models", "embedded"])
    assert args.pairs == 10 and args.quick and not args.full
    with pytest.raises(SystemExit):
        script.parse_args(["--models", "vgg"])
    with pytest.raises(SystemExit):
        script.parse_args(["--quick", "--full"])


def test_update_readme_replaces_only_the_marked_block(tmp_path):
    script = helpers.load_script("benchmark")
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n## Benchmark\nintro\n{script.README_START}\nold table\n{script.README_END}\nafter\n")
    script.update_readme(readme, "| new |\n")
    assert (
        readme.read_text()
        == f"# x\n\n## Benchmark\nintro\n{script.README_START}\n| new |\n{script.README_END}\nafter\n"
    )
    readme.write_text("# no markers\n")
    with pytest.raises(SystemExit, match="markers|bench:start"):
        script.update_readme(readme, "| new |\n")


def test_bf16_table_path_with_fp32_runs_standing_in(tmp_path):
    """The bf16 comparison of the script, fed an fp32 run twice (bf16 cannot run on AVX2-only CPUs)."""
    script = helpers.load_script("benchmark")
    runner = script.Bench(script.parse_args(["--quick", "--models", "embedded", "--output", str(tmp_path / "b.md")]))
    runner.bf16_supported, runner.bf16_reason = True, "stand-in"
    model, pairs = tiny_model(), tiny_pairs(2)
    run = bench.run_method(model, pairs, "occlusion", {"window": 6, "stride": 2}, batch_size=16)
    torch.save([list(maps) for maps in run.outputs], tmp_path / "maps.pt")
    rates = Rates(1e3)
    method = Measured(
        run.seconds,
        run.counts,
        rates,
        [(size, grad, 1e3) for size, grad in run.counts[0].batches],
        baseline_rss_mb=5.0,
        peak_rss_mb=10.0,
        maps=str(tmp_path / "maps.pt"),
    )
    explanations = [explain(model, p.x1, p.x2, "gradcam") for p in pairs]
    metric_run = bench.run_metric(model, pairs, explanations, "deletion_simultaneous", {"step": 32}, batch_size=8)
    metric = Measured(
        metric_run.seconds,
        metric_run.counts,
        rates,
        [(size, grad, 1e3) for size, grad in metric_run.counts[0].batches],
        pairs_per_call=metric_run.pairs_per_call,
        values=metric_run.outputs,
    )
    runner.sections["embedded"] = ModelSection(
        "tiny",
        2,
        16,
        methods={"occlusion": {"fp32": Entry({}, method), "bf16": Entry({}, method)}},
        metrics={"deletion_simultaneous": {"fp32": Entry({}, metric), "bf16": Entry({}, metric)}},
    )
    text = runner.markdown()
    # equal runs: speed-up 1.00 misses the 1.8x target of perturbation rows, agreement is perfect
    assert "| occlusion | 1.00 | 1.0000 |  | MISSED |" in text
    assert "| deletion_simultaneous | 1.00 |  | 0.0000 | MISSED |" in text
    # the per-pair row: the counted passes of one pair and the overhead against 1000 img/s
    count = bench.mean_count(run.counts)
    assert method.overhead == pytest.approx(method.call_seconds / (count.forward_only / 1e3))
    assert f"| {method.seconds_per_pair:.3g} | {count.forward_only} | 0 | 1000.0 |" in text
    json.dumps(runner.record())  # the raw record is plain JSON


def test_rows_carry_failures_and_refusals_in_full_width_rows():
    failed = report.measured_row("occlusion", Entry({"stride": 2}, Failure("boom")), "fp32", True)
    refused = report.measured_row("gradcam", Entry({}, NotApplicable("bf16 refused: maps move")), "bf16", False)
    for row in (failed, refused):
        assert len(row) == len(report.ROW_HEADER) + 1
    assert failed[:4] == ["occlusion", "stride=2", "fp32", "error: boom"]
    assert refused[3] == "NA (bf16 refused: maps move)"


def test_job_rejects_what_it_cannot_run():
    with pytest.raises(ValueError, match="job kind"):
        Job("profile", "embedded", pairs=1)
    with pytest.raises(ValueError, match="needs `method`"):
        Job("method", "embedded", pairs=1)
    with pytest.raises(ValueError, match="at least one pair"):
        Job("throughput", "embedded", pairs=0)


def test_a_job_runs_in_a_fresh_process_and_its_failure_comes_back_typed():
    done = run_job(Job("throughput", "embedded", pairs=1, batch_size=2, throughput_batches=(1, 1)), timeout=300)
    assert isinstance(done, JobResult) and done.batch_size == 2
    assert isinstance(done.outcome, Rates) and done.outcome.forward > 0 and done.outcome.train > 0
    failed = run_job(Job("method", "embedded", pairs=1, method="no_such_method"), timeout=300)
    assert isinstance(failed, Failure) and "no_such_method" in failed.error


def test_pass_counts_round_trip_and_average():
    a = bench.PassCount(forward=10, forward_grad=2, backward=2)
    a.batches.update({(8, False): 1, (2, True): 1, (1, False): 2})
    again = bench.PassCount.from_dict(a.as_dict())
    assert again == a
    b = bench.PassCount(forward=13, forward_grad=2, backward=2)
    mean = bench.mean_count([a, b])
    assert (mean.forward, mean.forward_grad, mean.backward) == (round(11.5), 2, 2) and mean.batches == a.batches
    with pytest.raises(ValueError, match="no pass counts"):
        bench.mean_count([])
