"""What determines a training run: `TrainConfig` and the default configuration of each objective."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..data.scenes import CLASSES, DEFAULT_SIZE, SPLIT_SIZES
from ..models.embedded import ARCHS, OBJECTIVES, SIMCLR_SNAPSHOTS, check_vit_stem
from ..models.vit import POOLS

OPTIMIZERS = ("adamw", "sgd")


@dataclass
class TrainConfig:
    """Everything that determines a training run (stored in the checkpoint and the manifest)."""

    objective: str
    epochs: int = 20
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-5
    temperature: float = 0.2  # SimCLR
    barlow_lambda: float = 5e-3  # Barlow Twins off-diagonal weight
    width: int = 16
    out_dim: int | None = None  # head output (None = the objective's default)
    n_classes: int = len(CLASSES)
    size: int = DEFAULT_SIZE
    n_train: int = SPLIT_SIZES["train"]
    seed: int = 0
    data_seed: int = 0
    threads: int = 1  # part of the determinism contract: same threads -> same weights
    view_epochs: int | None = None  # distinct view banks, cycled: epoch e uses bank (e - 1) % view_epochs + 1
    channels_last: bool = False  # train the backbone in channels-last layout (about 1.3x faster on CPU; other rounding)
    warmup_epochs: int = 0  # linear learning-rate warm-up before the cosine decay
    fixed_predictor_lr: bool = False  # SimSiam: keep the predictor's learning rate constant (no cosine decay)
    optimizer: str = "adamw"  # or "sgd" (momentum 0.9, as the SimSiam paper; weight decay then is L2)
    max_steps: int | None = None  # stop early (tests)
    redraw_p: float = 0.75  # background augmentation: chance that a view shows the target on another scene's context
    crop_scale: tuple[float, float] = (0.2, 1.0)  # area range of the training views' random resized crop
    min_visible: float = 0.5  # share of the target's pixels every training crop keeps
    # training views' colour jitter (brightness, contrast, saturation, hue) and grayscale probability: stronger
    # than the SimCLR recipe's (hue 0.2, grayscale 0.2), since the two views of a scene share the target's colours
    jitter: tuple[float, float, float, float] = (0.8, 0.8, 0.8, 0.5)
    gray_p: float = 0.5
    snapshots: tuple[int, ...] = field(default_factory=tuple)
    # the network: "resnet" (`width` = stem channels) or "vit" (`width` = token width, with `depth` blocks of
    # `heads` heads, `patch` px patches and MLPs `mlp_ratio` times wider)
    arch: str = "resnet"
    depth: int = 4
    heads: int = 2
    patch: int = 8
    mlp_ratio: float = 2.0
    pool: str = "cls"  # a ViT's explained embedding: the CLS token or the mean of the patch tokens (after the norm)
    stem: str = "patch"  # a ViT's patch embedding: one patch-sized convolution or a convolutional stem ("conv")

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; choose one of {OBJECTIVES}")
        if self.arch not in ARCHS:
            raise ValueError(f"unknown architecture {self.arch!r}; choose one of {ARCHS}")
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS} (a ViT's embedding), got {self.pool!r}")
        check_vit_stem(self.stem, self.patch)
        if self.arch == "vit" and (self.size % self.patch or self.width % self.heads):
            raise ValueError(
                f"a ViT needs the view size ({self.size}) to be a multiple of the patch ({self.patch}) and the "
                f"width ({self.width}) a multiple of the heads ({self.heads})"
            )
        if self.view_epochs is not None and self.view_epochs < 1:
            raise ValueError(f"view_epochs must be a positive number of view banks or None, got {self.view_epochs!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {OPTIMIZERS}")
        if self.channels_last and self.width < 16:
            # oneDNN issue 6035: in channels-last layout the weight gradient of a strided 1x1 convolution
            # with fewer input channels than the kernel's block (8 on AVX2, 16 on AVX-512) writes out of bounds
            raise ValueError(
                f"channels_last training needs width >= 16 (got {self.width}): oneDNN's strided 1x1 "
                "convolution gradient corrupts memory for fewer input channels; set channels_last=False"
            )

    @property
    def model_name(self) -> str:
        """The registered name of the model this config trains."""
        return "embedded-vit" if self.arch == "vit" else f"embedded-{self.objective}"


#: Every objective but SimSiam trains on the same twelve cycled view banks (two threads, channels-last), so one
#: `make models` renders them once. Views show the target on another scene's context three times in four
#: (`redraw_p`), so that the two views of a pair rarely share more than the object. Barlow Twins keeps the first
#: generation's wide projector and weight decay 0.05 (and 80 epochs: at 70 it stopped at probe 0.782, kNN 0.699).
#: SimSiam, which has no negatives, collapsed under those views' strong colour jitter in every setting screened (SGD
#: at learning rates 0.003-0.03, batch 256, AdamW, redraw 0.25-0.75: probe near or below random init, or a collapse
#: by epoch 30); it trains on its own banks with the SimSiam paper's colour jitter (0.4, 0.4, 0.4, hue 0.1;
#: grayscale 0.2), the target redrawn in one view of two, and AdamW for 100 epochs (at 70: probe 0.644, where SGD at
#: lr 0.03 reached 0.595; data/README.md lists the screens).
_SHARED = dict(view_epochs=12, channels_last=True, threads=2)
DEFAULT_CONFIGS = {
    "simclr": TrainConfig("simclr", epochs=70, snapshots=tuple(SIMCLR_SNAPSHOTS), **_SHARED),
    "barlow-twins": TrainConfig("barlow-twins", epochs=80, out_dim=512, weight_decay=0.05, **_SHARED),
    "simsiam": TrainConfig(
        "simsiam",
        epochs=100,
        out_dim=512,
        lr=1e-3,
        fixed_predictor_lr=True,
        redraw_p=0.5,
        jitter=(0.4, 0.4, 0.4, 0.1),
        gray_p=0.2,
        **_SHARED,
    ),
    "supervised": TrainConfig("supervised", epochs=70, **_SHARED),
    # the embedded ViT (`embedded-vit`): SimCLR on the same views, 64-wide tokens, 4 blocks of 2 heads, 8 px
    # patches from a convolutional stem; its embedding is the CLS token. In 40 epochs the stem took kNN from
    # 0.445 (one patch-sized convolution) to 0.640; the mean of the patch tokens reached 0.379 (patch stem)
    "vit": TrainConfig(
        "simclr",
        arch="vit",
        epochs=40,
        width=64,
        depth=4,
        heads=2,
        patch=8,
        mlp_ratio=2.0,
        stem="conv",
        warmup_epochs=3,
        weight_decay=0.05,
        view_epochs=12,
        threads=2,
    ),
}
