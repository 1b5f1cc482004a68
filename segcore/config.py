"""The one typed configuration: YAML in, `--set section.key=value` overrides, one-line errors.

Every setting of every job lives here, with its default and its allowed range. A YAML file only
names what differs from the defaults; an unknown key, a wrong type or an out-of-range value fails
at load time with a `ConfigError` naming the key, the value and what was expected.
"""
from __future__ import annotations

import dataclasses
import datetime
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from segcore.errors import InputError

DEFAULT_THRESHOLD = 0.45  # the fork's decision threshold: building where probability >= it
ModelPart = Literal["encoder", "decoder", "head"]
MODEL_PARTS: tuple[ModelPart, ...] = get_args(ModelPart)


class ConfigError(InputError):
    """A bad key or value in a config file or override; the message is one line."""


def _check(key: str, value: Any, ok: bool, expected: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}' has value {value!r}: expected {expected}")


@dataclass
class ModelConfig:
    arch: Literal["refinenet"] = "refinenet"
    backbone: Literal["resnet18", "resnet34", "resnet50", "resnet101"] = "resnet50"
    # 256 matches the public fork (its checkpoints load); a small width makes CPU development fast.
    decoder_width: int = 256
    # ImageNet weights are fetched from the internet: off by default, never on in tests or the demo.
    pretrained: bool = False

    def validate(self, at: str) -> None:
        _check(f"{at}.decoder_width", self.decoder_width, self.decoder_width >= 1, "an integer >= 1")


@dataclass
class InputConfig:
    """How raster pixels become model input in [0, 1]; shared by prepare, train and segment."""

    bands: list[int] = field(default_factory=lambda: [1, 2, 3])  # 1-based, in R, G, B order
    # Pixel value that maps to 1.0. None: 255 for uint8 imagery; any other dtype needs a value here.
    scale_max: float | None = None
    # Overrides the raster's own nodata value; None uses the raster's (if it has one).
    nodata: float | None = None
    # Ground sample distance (metres per pixel) the model sees: imagery over 1.25x finer or coarser is
    # resampled to it as it is read (GDAL, bilinear), and masks are written back on the input's own grid.
    # None: segment uses the checkpoint's training resolution (when it records one), prepare the imagery's own.
    target_gsd: float | None = None

    def validate(self, at: str) -> None:
        _check(f"{at}.bands", self.bands, len(self.bands) == 3 and all(b >= 1 for b in self.bands),
               "three 1-based band indexes, e.g. [1, 2, 3]")
        if self.scale_max is not None:
            _check(f"{at}.scale_max", self.scale_max, self.scale_max > 0, "a number > 0 or null")
        if self.target_gsd is not None:
            _check(f"{at}.target_gsd", self.target_gsd, 0.01 <= self.target_gsd <= 100,
                   "metres per pixel in [0.01, 100] or null")


@dataclass
class PrepareConfig:
    tile_size: int = 384
    overlap: int = 0  # pixels shared by neighbouring patches (stride = tile_size - overlap)
    # The spatial split assigns whole blocks of this many pixels a side to one split, so
    # overlapping or neighbouring patches never straddle train and val.
    split_block: int = 1536
    train_ratio: float = 0.7
    val_ratio: float = 0.15
    test_ratio: float = 0.15
    seed: int = 0

    def validate(self, at: str) -> None:
        _check(f"{at}.tile_size", self.tile_size, self.tile_size >= 32 and self.tile_size % 32 == 0,
               "a multiple of 32, >= 32")
        _check(f"{at}.overlap", self.overlap, 0 <= self.overlap < self.tile_size, "0 <= overlap < tile_size")
        _check(f"{at}.split_block", self.split_block, self.split_block >= self.tile_size, ">= tile_size")
        for name in ("train_ratio", "val_ratio", "test_ratio"):
            value = getattr(self, name)
            _check(f"{at}.{name}", value, 0.0 <= value <= 1.0, "a fraction in [0, 1]")
        total = self.train_ratio + self.val_ratio + self.test_ratio
        _check(f"{at}.train_ratio", self.train_ratio, abs(total - 1.0) < 1e-6,
               f"train_ratio + val_ratio + test_ratio == 1 (they sum to {total:g})")


@dataclass
class AugmentConfig:
    """Albumentations applied to training patches on the CPU side (`segcore.data.transforms`).

    Each transform runs with its probability (0 turns it off). Geometric ones move image and mask together;
    blur, colour and noise change the image only. The defaults are the fork's flips and rotation.
    """

    hflip: float = 0.5  # probability
    vflip: float = 0.5
    # A random multiple of 90 degrees; with hflip it reaches all 8 symmetries of the square (D4): roofs
    # have no preferred orientation from above.
    rot90: float = 0.0
    rotate_limit: float = 15.0  # degrees
    rotate_p: float = 0.5
    # Zoom by a factor in [1 / (1 + scale_limit), 1 + scale_limit], as likely in as out: the ground
    # resolution of other sensors and mosaics around the training data's (mirrored at the patch border).
    scale: float = 0.0
    scale_limit: float = 0.25
    # Gaussian blur with sigma up to blur_sigma px: softer optics, resampled or hazy imagery.
    blur: float = 0.0
    blur_sigma: float = 1.0
    brightness_contrast: float = 0.0  # probability of a brightness/contrast jitter
    brightness_limit: float = 0.1  # +- this fraction of full scale
    contrast_limit: float = 0.1  # +- this fraction
    # Hue, saturation and value shifts up to these limits, in OpenCV's uint8 HSV units (hue: 180 is a full
    # turn; saturation and value: 255 is full scale): roofs of every colour, other sensors' colour balance.
    hue_saturation: float = 0.0
    hue_shift: float = 10.0
    saturation_shift: float = 30.0
    value_shift: float = 10.0
    gamma: float = 0.0  # probability of a gamma curve with exponent in [1 - gamma_limit, 1 + gamma_limit]
    gamma_limit: float = 0.2
    # Gaussian noise per channel with a standard deviation up to noise_std of full scale: sensor noise.
    noise: float = 0.0
    noise_std: float = 0.03

    def validate(self, at: str) -> None:
        for name in ("hflip", "vflip", "rot90", "rotate_p", "scale", "blur", "brightness_contrast",
                     "hue_saturation", "gamma", "noise"):
            value = getattr(self, name)
            _check(f"{at}.{name}", value, 0.0 <= value <= 1.0, "a probability in [0, 1]")
        _check(f"{at}.rotate_limit", self.rotate_limit, 0 <= self.rotate_limit <= 180, "degrees in [0, 180]")
        _check(f"{at}.scale_limit", self.scale_limit, 0 < self.scale_limit <= 1, "a fraction in (0, 1]")
        _check(f"{at}.blur_sigma", self.blur_sigma, 0 < self.blur_sigma <= 10, "pixels in (0, 10]")
        for name in ("brightness_limit", "contrast_limit", "gamma_limit"):
            value = getattr(self, name)
            _check(f"{at}.{name}", value, 0 < value < 1, "a fraction in (0, 1)")
        _check(f"{at}.hue_shift", self.hue_shift, 0 <= self.hue_shift <= 90,
               "a hue shift in [0, 90] (180 = a full turn)")
        for name in ("saturation_shift", "value_shift"):
            value = getattr(self, name)
            _check(f"{at}.{name}", value, 0 <= value <= 255, "a shift in [0, 255]")
        _check(f"{at}.noise_std", self.noise_std, 0 < self.noise_std <= 0.5, "a fraction of full scale in (0, 0.5]")


@dataclass
class TrainConfig:
    data_root: str = ""  # ROOT/{train,val,test}/{images,labels}, local or s3://
    run_dir: str = "runs/train"  # checkpoints, metrics.csv, plots; local or s3://
    tile_size: int = 384  # every patch must be tile_size x tile_size
    epochs: int = 50
    batch_size: int = 16  # per worker
    lr: float = 1e-4
    weight_decay: float = 1e-5
    loss: Literal["bce", "bce_dice", "bce_jaccard"] = "bce_dice"
    loss_weight: float = 1.0  # weight of the Dice or Jaccard term
    scheduler: Literal["none", "cosine", "step", "plateau"] = "cosine"
    warmup_epochs: int = 0
    step_size: int = 10  # epochs, for scheduler "step"
    gamma: float = 0.1  # lr factor for "step" and "plateau"
    plateau_patience: int = 3
    grad_clip: float = 0.0  # max gradient norm; 0 disables clipping
    early_stop_patience: int = 0  # epochs without a better val IoU; 0 disables early stopping
    threshold: float = DEFAULT_THRESHOLD  # the decision threshold of the validation metrics
    seed: int = 0  # initial weights, each epoch's patch order and augmentations: a rerun trains the same model
    num_workers: int = 2
    use_gpu: bool = False
    # Fractions are fine: on a 2-CPU machine, 2 workers at 0.5 leave a CPU for Ray Data's loading tasks.
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0  # only with use_gpu
    precision: Literal["fp32", "bf16"] = "bf16"  # bf16 autocast applies on GPU only
    channels_last: bool = True  # GPU only
    max_failures: int = 2  # worker failures Ray Train recovers from (from the last checkpoint)
    # The workers' collective backend: auto is NCCL with use_gpu, else gloo (which also runs on GPUs).
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    # Fine-tuning: start from this checkpoint's weights (segcore or fork; local or s3://), with a fresh
    # optimizer and schedule. init_parts picks what it initialises; the rest starts fresh (e.g. [encoder]
    # keeps a backbone and trains a decoder of another width). --resume continues a run instead.
    init_from: str = ""
    init_parts: list[ModelPart] = field(default_factory=lambda: list(MODEL_PARTS))
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # Where every epoch's metrics and the plots also go: TensorBoard (run_dir/tensorboard) and/or MLflow
    # (MLFLOW_TRACKING_URI, else a store in run_dir/mlruns; needs `pip install .[mlflow]`).
    tracking: list[Literal["tensorboard", "mlflow"]] = field(default_factory=lambda: ["tensorboard"])

    def validate(self, at: str) -> None:
        for name, low in (("epochs", 1), ("batch_size", 1), ("num_workers", 1),
                          ("step_size", 1), ("plateau_patience", 0), ("warmup_epochs", 0),
                          ("early_stop_patience", 0), ("max_failures", 0)):
            value = getattr(self, name)
            _check(f"{at}.{name}", value, value >= low, f"an integer >= {low}")
        _check(f"{at}.tile_size", self.tile_size, self.tile_size >= 32 and self.tile_size % 32 == 0,
               "a multiple of 32, >= 32")
        _check(f"{at}.lr", self.lr, self.lr > 0, "a number > 0")
        _check(f"{at}.weight_decay", self.weight_decay, self.weight_decay >= 0, "a number >= 0")
        _check(f"{at}.loss_weight", self.loss_weight, self.loss_weight >= 0, "a number >= 0")
        _check(f"{at}.gamma", self.gamma, 0 < self.gamma <= 1, "a factor in (0, 1]")
        _check(f"{at}.grad_clip", self.grad_clip, self.grad_clip >= 0, "a number >= 0 (0 disables)")
        _check(f"{at}.threshold", self.threshold, 0 < self.threshold < 1, "a probability in (0, 1)")
        _check(f"{at}.gpus_per_worker", self.gpus_per_worker, self.gpus_per_worker > 0, "a number > 0")
        _check(f"{at}.cpus_per_worker", self.cpus_per_worker, self.cpus_per_worker > 0, "a number > 0")
        _check(f"{at}.init_parts", self.init_parts, bool(self.init_parts) and len(set(self.init_parts)) ==
               len(self.init_parts), f"a non-empty list of distinct parts among {', '.join(MODEL_PARTS)}")
        _check(f"{at}.tracking", self.tracking, len(set(self.tracking)) == len(self.tracking),
               "each of tensorboard, mlflow at most once")


@dataclass
class SegmentConfig:
    tile_size: int = 384  # model input; a multiple of 32
    overlap: int = 64  # pixels shared by neighbouring tiles, blended with a smooth window
    block_size: int = 2304  # pixels a side of the unit of work (read, infer, write, resume)
    batch_size: int = 8  # tiles per forward pass
    threshold: float | None = None  # None: the checkpoint's stored threshold, else DEFAULT_THRESHOLD
    actors: int = 1  # inference actors: one per GPU on a GPU cluster
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0  # 1 on GPU clusters; 0 runs CPU actors (local mode)
    torch_threads: int = 0  # intra-op threads per CPU actor; 0 = cpus_per_actor
    # Blocks each inference actor works on at once. With 2, a GPU runs one block's forward passes while the
    # actor unpacks the next block, cuts its first tiles and hands the last one's results on; on a CPU actor
    # both would share its cores.
    blocks_per_actor: int = 1
    # The CPU stages around inference scale with the CPUs, not with the GPUs: block readers (read and decode)
    # and writers (block files, building vectors) are actor pools of up to this many (0: half each of the
    # cluster's CPUs beyond the inference actors and the assemblers). Assemblers build mosaics' outputs from
    # their block files as they are written, several mosaics each; more of them pay when many mosaics stream
    # at GPU speed.
    readers: int = 0
    writers: int = 0
    assemblers: int = 1
    cpus_per_reader: float = 0.5
    cpus_per_writer: float = 0.5
    cpus_per_assembly: float = 1.0
    precision: Literal["fp32", "bf16"] = "bf16"  # bf16 autocast applies on GPU only
    channels_last: bool = True  # NHWC model and tiles, on GPU and CPU (faster on both)
    compile: bool = False  # torch.compile the model in each actor (pays off on GPU for long runs)
    # Test-time augmentation: average each tile's probabilities over its mirror image ("flip", 2 forward
    # passes) or all 8 flips and right-angle turns ("d4", 8 passes), on the device, before blending.
    tta: Literal["none", "flip", "d4"] = "none"
    write_probability: bool = False  # also write a uint8 0-255 probability COG
    write_polygons: bool = False  # also write building footprints (the `polygons` section says how)
    preview_size: int = 1024  # longest side of the preview PNG in pixels; 0 disables

    def validate(self, at: str) -> None:
        _check(f"{at}.tile_size", self.tile_size, self.tile_size >= 32 and self.tile_size % 32 == 0,
               "a multiple of 32, >= 32")
        _check(f"{at}.overlap", self.overlap, 0 <= self.overlap < self.tile_size,
               f"0 <= overlap < tile_size ({self.tile_size})")
        _check(f"{at}.block_size", self.block_size, self.block_size >= self.tile_size, ">= tile_size")
        _check(f"{at}.batch_size", self.batch_size, self.batch_size >= 1, "an integer >= 1")
        if self.threshold is not None:
            _check(f"{at}.threshold", self.threshold, 0 < self.threshold < 1, "a probability in (0, 1) or null")
        _check(f"{at}.actors", self.actors, self.actors >= 1, "an integer >= 1")
        _check(f"{at}.cpus_per_actor", self.cpus_per_actor, self.cpus_per_actor > 0, "a number > 0")
        _check(f"{at}.gpus_per_actor", self.gpus_per_actor, self.gpus_per_actor >= 0, "a number >= 0")
        _check(f"{at}.torch_threads", self.torch_threads, self.torch_threads >= 0, "an integer >= 0")
        _check(f"{at}.blocks_per_actor", self.blocks_per_actor, self.blocks_per_actor >= 1, "an integer >= 1")
        for name in ("readers", "writers"):
            _check(f"{at}.{name}", getattr(self, name), getattr(self, name) >= 0, "an integer >= 0 (0: from the CPUs)")
        _check(f"{at}.assemblers", self.assemblers, self.assemblers >= 1, "an integer >= 1")
        for name in ("cpus_per_reader", "cpus_per_writer", "cpus_per_assembly"):
            _check(f"{at}.{name}", getattr(self, name), getattr(self, name) > 0, "a number > 0")
        _check(f"{at}.preview_size", self.preview_size, self.preview_size >= 0, "an integer >= 0")


@dataclass
class PolygonConfig:
    """Building footprints from the mask: shape cleaning, regularization, output file, object matching.

    Lengths and areas are on the ground (metres, from the raster's CRS); a raster without a CRS has none,
    and then they are in pixels (1 px = 1 m).
    """

    format: Literal["geoparquet", "gpkg", "fgb", "geojson"] = "geoparquet"
    crs: Literal["image", "EPSG:4326"] = "image"  # output coordinates: the raster's CRS, or longitude/latitude
    min_area_m2: float = 4.0  # smaller buildings are dropped (after hole filling)
    fill_holes_m2: float = 4.0  # holes smaller than this are filled
    simplify_px: float = 1.0  # Douglas-Peucker tolerance, in pixels; 0 keeps the pixel outline
    regularize: bool = False  # right-angled outlines along each building's dominant orientation
    regularize_angle_deg: float = 15.0  # edges this close to the dominant axes are snapped to them
    regularize_min_edge_m: float = 2.0  # shorter edges are dropped (their neighbours extended)
    # The share of a polygon's area its regularized outline may differ by (area of the symmetric
    # difference / area); beyond it the simplified outline is kept.
    regularize_max_change: float = 0.25
    match_iou: float = 0.5  # object metrics: a prediction matches a true building at IoU >= this (SpaceNet)

    def validate(self, at: str) -> None:
        for name in ("min_area_m2", "fill_holes_m2", "simplify_px"):
            value = getattr(self, name)
            _check(f"{at}.{name}", value, value >= 0, "a number >= 0")
        _check(f"{at}.regularize_angle_deg", self.regularize_angle_deg, 0 < self.regularize_angle_deg < 45,
               "degrees in (0, 45)")
        _check(f"{at}.regularize_min_edge_m", self.regularize_min_edge_m, self.regularize_min_edge_m >= 0,
               "a number >= 0")
        _check(f"{at}.regularize_max_change", self.regularize_max_change, 0 < self.regularize_max_change <= 1,
               "a fraction in (0, 1]")
        _check(f"{at}.match_iou", self.match_iou, 0 < self.match_iou <= 1, "an IoU in (0, 1]")
        if self.regularize:
            # Regularization reads edge directions off the simplified outline; a pixel outline has only
            # horizontal and vertical edges, whatever the building's orientation.
            _check(f"{at}.simplify_px", self.simplify_px, self.simplify_px > 0, "a number > 0 when regularize is true")


@dataclass
class SynthConfig:
    """How the generated city (`segcore.synth`) looks. The defaults render it exactly as it always has; each
    option moves it towards real imagery (for pretraining before fine-tuning on real mosaics)."""

    # Metres per pixel of the written image. The city is planned at pixel_size (0.5 m) and resampled to this
    # (e.g. 0.3, the real mosaics' resolution); null writes it at pixel_size.
    ground_resolution: float | None = None
    # "global" adds the metal-sheet roofs of the tropics and South Asia (blue, teal, green, red, rust,
    # bare zinc) to a share of the temperate palette's tile, slate and concrete roofs.
    roof_colours: Literal["temperate", "global"] = "temperate"
    trees_over_roofs: float = 0.0  # share of buildings with a tree crown over part of the roof (still labelled)
    haze: float = 0.0  # largest share of bright airlight blended in, varying smoothly over the scene
    blur_sigma: float = 0.7  # px of the rendered grid: optics and resampling softness
    noise_sigma: float = 3.0  # grey levels of luminance noise
    colour_noise: float = 0.0  # grey levels of extra per-channel (chroma) noise

    def validate(self, at: str) -> None:
        if self.ground_resolution is not None:
            _check(f"{at}.ground_resolution", self.ground_resolution, 0.05 <= self.ground_resolution <= 5,
                   "metres per pixel in [0.05, 5] or null")
        for name in ("trees_over_roofs", "haze"):
            value = getattr(self, name)
            _check(f"{at}.{name}", value, 0.0 <= value <= 1.0, "a fraction in [0, 1]")
        _check(f"{at}.blur_sigma", self.blur_sigma, 0 < self.blur_sigma <= 3, "pixels in (0, 3]")
        for name in ("noise_sigma", "colour_noise"):
            value = getattr(self, name)
            _check(f"{at}.{name}", value, 0 <= value <= 50, "grey levels in [0, 50]")


@dataclass
class S3Config:
    """Where s3:// paths go. Credentials come from the standard AWS environment/profile, never from here."""

    endpoint_url: str | None = None  # e.g. a MinIO or test server; None = AWS
    region: str | None = None
    # Unsigned requests, for public buckets (open imagery): no credentials are looked up or sent.
    anonymous: bool = False
    # Tries per S3 request, with exponential backoff (botocore's standard mode; Ray Train's checkpoint uploads
    # the same). s3fs tries each call up to 5 times on top: the default rides out outages of ~30 s.
    max_attempts: int = 5

    def validate(self, at: str) -> None:
        _check(f"{at}.max_attempts", self.max_attempts, self.max_attempts >= 1, "an integer >= 1")


@dataclass
class StorageConfig:
    """Where a job's files may live when its Ray cluster has several nodes."""

    # Local paths (inputs, outputs, datasets, run directories) are on a file system every node mounts at the
    # same path (NFS, EFS, Lustre). Without it a cluster of several nodes takes s3:// paths only: work on
    # another node would read what is not there and write where the driver never looks.
    shared_fs: bool = False


@dataclass
class HTTPConfig:
    """How http(s):// inputs are read: GDAL range requests for rasters, plain GETs for STAC JSON."""

    timeout_s: float = 30.0  # per request, from connecting to the last byte (GDAL_HTTP_TIMEOUT)
    # Retries of a request that failed with 429, 5xx or a network error (GDAL_HTTP_MAX_RETRY).
    max_retries: int = 3
    retry_delay_s: float = 1.0  # before the first retry; doubles with each one (GDAL_HTTP_RETRY_DELAY)

    def validate(self, at: str) -> None:
        _check(f"{at}.timeout_s", self.timeout_s, self.timeout_s > 0, "a number of seconds > 0")
        _check(f"{at}.max_retries", self.max_retries, self.max_retries >= 0, "an integer >= 0")
        _check(f"{at}.retry_delay_s", self.retry_delay_s, self.retry_delay_s >= 0, "a number of seconds >= 0")


def _instant(text: str, end: bool) -> datetime.datetime | None:
    """An RFC 3339 date-time or date (UTC unless it says otherwise); '..' or '' is an open end (None).

    A date alone means its whole day: its first instant as a start, its last as an end.
    """
    text = text.strip()
    if text in ("", ".."):
        return None
    parsed = datetime.datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in "Zz" else text)
    if end and len(text) == 10:
        parsed += datetime.timedelta(days=1, microseconds=-1)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.timezone.utc)


def datetime_interval(text: str) -> tuple[datetime.datetime | None, datetime.datetime | None]:
    """'START/END' (either end may be '..' or empty) or one instant, as (start, end); None is an open end."""
    start, sep, end = text.partition("/")
    return _instant(start, False), _instant(end if sep else start, True)


@dataclass
class StacConfig:
    """Which raster of each STAC Item an input spec that is STAC JSON (Item, ItemCollection, Catalog) stands for.

    Its own section, not `input`'s: a checkpoint stores `input` as the pixel rules it was trained with, and
    a segment run that names any `input` key replaces them.
    """

    asset: str = "visual"  # the asset key of the image in each Item (e.g. "visual", "image")
    # Items of a catalog or ItemCollection whose bbox intersects [west, south, east, north] (degrees, WGS 84).
    bbox: list[float] | None = None
    # Items whose datetime (or start/end range) meets this RFC 3339 instant or interval, e.g.
    # "2023-01-01/2023-12-31", "2023-06-01T00:00:00Z/..", "2023-06-01".
    datetime: str | None = None

    def validate(self, at: str) -> None:
        _check(f"{at}.asset", self.asset, bool(self.asset.strip()), "an asset key, e.g. visual")
        if self.bbox is not None:
            ok = len(self.bbox) == 4 and -180 <= self.bbox[0] < self.bbox[2] <= 180 \
                and -90 <= self.bbox[1] < self.bbox[3] <= 90
            _check(f"{at}.bbox", self.bbox, ok, "[west, south, east, north] in degrees, west < east, south < north")
        if self.datetime is not None:
            try:
                start, end = datetime_interval(self.datetime)
                ok = start is None or end is None or start <= end
            except ValueError:
                ok = False
            _check(f"{at}.datetime", self.datetime, ok, "an RFC 3339 date-time, date or START/END interval "
                   "(an open end is '..'), e.g. 2023-01-01/2023-12-31")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    input: InputConfig = field(default_factory=InputConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    polygons: PolygonConfig = field(default_factory=PolygonConfig)
    s3: S3Config = field(default_factory=S3Config)
    storage: StorageConfig = field(default_factory=StorageConfig)
    http: HTTPConfig = field(default_factory=HTTPConfig)
    stac: StacConfig = field(default_factory=StacConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Return value as type `hint`, or raise a ConfigError naming key, value and the expected type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if origin is Literal:
        _check(key, value, value in args, "one of " + ", ".join(repr(a) for a in args))
        return value
    if origin is list:
        _check(key, value, isinstance(value, list), "a list")
        return [_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        _check(key, value, isinstance(value, dict), "a mapping of settings")
        return section_from_dict(hint, value, key)
    if hint is bool:
        _check(key, value, isinstance(value, bool), "true or false")
    elif hint is int:
        _check(key, value, isinstance(value, int) and not isinstance(value, bool), "an integer")
    elif hint is float:
        if isinstance(value, str) and _is_number(value):  # YAML 1.1 reads "3e-4" (no dot) as a string
            value = float(value)
        _check(key, value, isinstance(value, (int, float)) and not isinstance(value, bool), "a number")
        value = float(value)
    elif hint is str:
        if isinstance(value, datetime.date):  # YAML reads a bare date or time stamp as one (stac.datetime)
            value = value.isoformat()
        _check(key, value, isinstance(value, str), "a string")
    return value


def section_from_dict(cls: type, data: dict, at: str) -> Any:
    """A config dataclass (Config or one section) from plain data, validated; `at` names it in errors."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            where = f"{at}.{key}" if at else str(key)
            raise ConfigError(f"config key '{where}' is unknown: expected one of {', '.join(names)}")
    values = {k: _coerce(f"{at}.{k}" if at else k, v, hints[k]) for k, v in data.items()}
    obj = cls(**values)
    if hasattr(obj, "validate"):
        obj.validate(at)
    return obj


def _parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not of the form section.key=value")
    try:
        value = yaml.safe_load(raw)
    except (yaml.YAMLError, ValueError):  # ValueError: what looks like a date but is none, e.g. 2023-13-01
        value = raw
    return key.strip().split("."), value


def _merged(base: dict, changes: dict) -> dict:
    """`base` with `changes` laid over it, section by section."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                base: dict | None = None) -> Config:
    """Load a Config from a YAML file, then apply overrides. Settings neither names come from `base` (plain
    data, e.g. the config a run stored, which --resume continues) or else from the defaults."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (yaml.YAMLError, ValueError) as exc:
            line = getattr(getattr(exc, "problem_mark", None), "line", None)
            where = f" (line {line + 1})" if line is not None else ""
            raise ConfigError(f"config file {path} is not valid YAML{where}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    for item in overrides:
        keys, value = _parse_override(item)
        node = data
        for part in keys[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: '{part}' is a setting, not a section")
            node = child
        node[keys[-1]] = value
    return config_from_dict(_merged(base or {}, data))


def config_from_dict(data: dict) -> Config:
    """Build and validate a Config from plain data (a parsed YAML file, or a checkpoint's stored config)."""
    return section_from_dict(Config, data, "")
