"""Check the study's key claims on the embedded default with many held-out pairs; prints markdown tables.

    python scripts/validate_embedded.py --pairs 100

Claims checked (issues: explainers, metrics): CAMs and occlusion point at the object far more often
than a random map; insertion AUC > deletion AUC for them with the random map in between (simultaneous
and conditional), for a per-pixel random map and for one on the backbone's feature grid, with paired
bootstrap CIs of each method's gain over the baseline; maps change when the weights are randomised
(cascading randomisation test). Also prints where the insertion curves start and end, which bounds
how much insertion can separate maps.
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

import cl_explain
from cl_explain.data.pairings import scene_pairs
from cl_explain.metrics import format_table
from cl_explain.metrics import bootstrap_ci
from cl_explain.metrics.perturbation import perturbation_curves
from cl_explain.metrics.sanity import random_explanation, randomization_test
from cl_explain.notebook import markdown_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded-simclr")
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--randomisation-pairs", type=int, default=10)
    parser.add_argument("--cache", default="build/cache/validate")
    args = parser.parse_args()

    model = cl_explain.load_model(args.model)
    pairs = scene_pairs(args.pairs, split="test", seed=0)
    with torch.no_grad():
        grid = int(model.features(pairs[0].x1).shape[-1])
    # two random baselines: per pixel, and on the backbone's feature grid (the granularity of the CAM maps)
    baselines = {"random": {}, "random_grid": {"method": "random", "cells": grid}}
    explainers = ["gradcam", "interaction_cam", "occlusion"]
    methods = explainers + list(baselines)
    metrics = [
        "insertion_simultaneous",
        "deletion_simultaneous",
        "insertion_conditional",
        "deletion_conditional",
        "pointing_game",
        "energy_pointing_game",
    ]
    start = time.perf_counter()
    df = cl_explain.evaluate(
        model, pairs, methods, metrics, method_params=baselines, cache_dir=args.cache, progress=False
    )
    print(
        f"## {args.model}: {args.pairs} test pairs, {time.perf_counter() - start:.0f} s "
        f"(random_grid: random {grid} x {grid} maps, bilinearly upsampled like the CAMs)\n"
    )
    print(format_table(cl_explain.summarize(df, n_boot=2000), metrics=metrics))

    per_pair = df[df.metric.isin(metrics)].pivot_table(
        index=["pair_id", "seed"], columns=["method", "metric"], values="value"
    )
    means = per_pair.mean().unstack()
    for baseline in baselines:
        for form in ("simultaneous", "conditional"):
            ins_name, del_name = f"insertion_{form}", f"deletion_{form}"
            rand_ins, rand_del = means.loc[baseline, ins_name], means.loc[baseline, del_name]
            print(f"\nInsertion > deletion, {baseline} in between ({form}); paired differences with bootstrap 95% CIs:")
            for method in explainers:
                ins, dele = means.loc[method, ins_name], means.loc[method, del_name]
                gains = []
                for name in (ins_name, del_name):
                    diff = (per_pair[(method, name)] - per_pair[(baseline, name)]).to_numpy()
                    low, high = bootstrap_ci(diff, n_boot=2000)
                    gains.append(
                        f"{name.split('_')[0]} {method} - {baseline} = {diff.mean():+.3f} [{low:+.3f}, {high:+.3f}]"
                    )
                print(
                    f"- {method}: insertion {ins:.3f} > deletion {dele:.3f}: {ins > dele}; "
                    f"{baseline} between (ins {rand_ins:.3f} < {ins:.3f}, del {rand_del:.3f} > {dele:.3f}): "
                    f"{rand_ins < ins and rand_del > dele}; " + "; ".join(gains)
                )

    # Why insertion separates so little here: where does the insertion curve start and end?
    ends = []
    for pair in pairs:
        rnd = random_explanation(pair.x1, pair.x2, seed=pair.seed)
        curve = perturbation_curves(model, pair.x1, pair.x2, rnd.map1, rnd.map2, "insertion", ("simultaneous",))
        scores = curve["simultaneous"].scores
        ends.append({"start: S(blurred x1, blurred x2)": float(scores[0]), "end: S(x1, x2)": float(scores[-1])})
    ends = pd.DataFrame(ends)
    print(
        "\nInsertion curve ends (simultaneous, mean over the pairs): "
        + ", ".join(f"{k} = {v:.3f}" for k, v in ends.mean().items())
        + f"; start >= end for {float((ends.iloc[:, 0] >= ends.iloc[:, 1]).mean()):.0%} of the pairs."
    )

    rows = []
    for pair in pairs[: args.randomisation_pairs]:
        for method in ("gradcam", "interaction_cam"):
            table = randomization_test(model, pair.x1, pair.x2, method)
            table["method"] = method
            rows.append(table)
    sanity = pd.concat(rows).groupby(["method", "step", "randomised"]).spearman.mean().unstack(0)
    print(f"\n## Cascading randomisation ({args.randomisation_pairs} pairs): mean Spearman to the trained maps\n")
    print(markdown_table(sanity.reset_index(), digits=3))


if __name__ == "__main__":
    main()
