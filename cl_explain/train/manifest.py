"""Build every embedded model, save checkpoints and snapshots, and write data/models/manifest.json."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from ..data.pairings import scene_pairs
from ..data.scenes import CLASSES, SPLIT_SIZES, load_split
from ..models.checkpoint_io import read_checkpoint, sha256_of
from ..models.embedded import (
    EMBEDDED_MODELS,
    build_network,
    checkpoint_payload,
    model_from_payload,
    models_dir,
    read_manifest,
)
from ..models.similarity import SimilarityModel
from ..utils import cpu_kernels, write_text_atomic
from .config import DEFAULT_CONFIGS, TrainConfig
from .loop import train
from .quality import EvalData, measure_quality, pointing_baselines, recompute_quality, round_quality


def _write_checkpoint(payload: dict, folder: Path) -> tuple[Path, str]:
    path = folder / f"{payload['name']}.pt"
    partial = path.with_name(path.name + ".partial")
    torch.save(payload, partial)
    partial.replace(path)
    return path, sha256_of(path)


def random_init_model(config: TrainConfig, normalize: dict) -> SimilarityModel:
    """The model `config` trains, at its seeded random initialisation (the baseline of the quality numbers)."""
    torch.manual_seed(config.seed)
    backbone, head = build_network(asdict(config))
    init = checkpoint_payload("init", config.objective, asdict(config), backbone, head, ([0.5] * 3, [0.25] * 3), 0)
    init["normalize"] = normalize
    return model_from_payload(init, "<init>")


def _config_of(entry: dict) -> TrainConfig:
    """The TrainConfig a manifest entry records (JSON lists back to tuples)."""
    tuples = {
        key: tuple(entry["config"][key]) for key in ("snapshots", "crop_scale", "jitter") if key in entry["config"]
    }
    return TrainConfig(**{**entry["config"], **tuples})


def reevaluate_all(folder: str | Path | None = None, log=print) -> dict:
    """Recompute every quality number of the manifest (trained models and their random-init baselines)
    from the committed checkpoints with the current evaluation, without retraining; rewrite the manifest.

    For a change of the evaluation alone: the numbers equal what a whole `make models` would write,
    since retraining reproduces the weights bit for bit."""
    folder = Path(folder) if folder is not None else models_dir()
    manifest = read_manifest(folder)
    data = EvalData.build(load_split("train", seed=0), load_split("test", seed=0), DEFAULT_CONFIGS["simclr"].size)
    for name, quality in recompute_quality(folder=folder, data=data).items():
        manifest["models"][name]["quality"] = quality
        log(f"[{name}] {json.dumps(quality)}")
    baselines: dict[tuple[str, str], dict[str, float]] = {}
    for name, entry in manifest["models"].items():
        family = (entry["objective"], entry["config"].get("arch", "resnet"))
        if family not in baselines:
            config = _config_of(entry)
            payload = read_checkpoint(folder / entry["file"], sha256=entry["sha256"])
            baselines[family] = round_quality(
                measure_quality(random_init_model(config, payload["normalize"]), data, threads=config.threads)
            )
            log(f"[{' '.join(family)} random init] {json.dumps(baselines[family])}")
        entry["random_init_quality"] = baselines[family]
    manifest["dataset"] = dataset_entry(DEFAULT_CONFIGS["simclr"].size)
    write_text_atomic(folder / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return manifest


def build_all(
    objectives: tuple[str, ...] = tuple(DEFAULT_CONFIGS), folder: str | Path | None = None, log=print
) -> dict:
    """Train the named objectives with DEFAULT_CONFIGS, save checkpoints and snapshots, evaluate them,
    and rewrite the manifest (other entries are kept). Returns the manifest."""
    folder = Path(folder) if folder is not None else models_dir()
    folder.mkdir(parents=True, exist_ok=True)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(DEFAULT_CONFIGS["simclr"].threads)  # view rendering too (threads only slow tiny ops)
    try:
        return _build(objectives, folder, log)
    finally:
        torch.set_num_threads(previous_threads)


#: Generation of the embedded data set and models (one in the package; `make models` rebuilds it).
GENERATION = 2
#: Pairs per mode of the pointing-game baselines stored with the data set.
POINTING_PAIRS = 200


def dataset_entry(size: int) -> dict:
    """The manifest's description of the data set, with the pointing-game hit rates of maps that know nothing."""
    return {
        "module": "cl_explain.data.scenes",
        "generation": GENERATION,
        "size": size,
        "seed": 0,
        "splits": dict(SPLIT_SIZES),
        "classes": list(CLASSES),
        "pointing_baselines": {
            mode: round_quality(pointing_baselines(scene_pairs(POINTING_PAIRS, "test", seed=0, size=size, mode=mode)))
            for mode in ("pure-augmented", "shared-object")
        },
    }


def _build(objectives: tuple[str, ...], folder: Path, log) -> dict:
    manifest = read_manifest(folder)
    train_scenes = load_split("train", seed=0)
    test_scenes = load_split("test", seed=0)
    data = EvalData.build(train_scenes, test_scenes, DEFAULT_CONFIGS["simclr"].size)
    dataset = dataset_entry(DEFAULT_CONFIGS["simclr"].size)
    banks: dict = {}
    for objective in objectives:
        config = DEFAULT_CONFIGS[objective]
        model, info = train(config, train_scenes, banks=banks, log=log)
        common = {
            "objective": config.objective,
            "arch": config.arch,
            "config": asdict(config),
            "seed": config.seed,
            "torch": torch.__version__,
            "kernels": cpu_kernels(),  # what a bit-for-bit rebuild on another CPU pins (see data/README.md)
            "train_seconds": round(info["seconds"], 1),
            "augment_seconds": round(info["augment_seconds"], 1),
            "train_steps": info["steps"],
            "final_loss": round(info["losses"][-1], 4),
        }
        random_init = None
        outputs = [(info["payload"], model)] + [
            (payload, model_from_payload(payload, path="<snapshot>")) for payload in info["snapshots"].values()
        ]
        for payload, trained in outputs:
            path, digest = _write_checkpoint(payload, folder)
            quality = round_quality(measure_quality(trained, data, threads=config.threads))
            if payload["epoch"] == 0:
                random_init = quality
            manifest["models"][payload["name"]] = {
                **common,
                "file": path.name,
                "epoch": payload["epoch"],
                "sha256": digest,
                "bytes": path.stat().st_size,
                "quality": quality,
            }
            log(f"[{payload['name']}] {json.dumps(quality)}")
        if random_init is None:  # same architecture at random init, for the comparison
            init = random_init_model(config, info["payload"]["normalize"])
            random_init = round_quality(measure_quality(init, data, threads=config.threads))
        for payload, _ in outputs:
            manifest["models"][payload["name"]]["random_init_quality"] = random_init
        manifest["dataset"] = dataset
        manifest["rebuild"] = "make models  (python -m cl_explain.train --all)"
        manifest["models"] = {
            name: entry for name, entry in sorted(manifest["models"].items()) if name in EMBEDDED_MODELS
        }
        write_text_atomic(folder / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return manifest
