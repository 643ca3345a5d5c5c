"""Datasets as in-memory uint8 tensors, with the paper's augmentation done in whole-batch tensor ops.

Every dataset becomes a `Dataset` of (N, 3, 32, 32) uint8 images and int64 labels, moved once to the
training device; there are no per-sample transforms and no loader worker processes.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import os
import re
import stat
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..config import DATA, check_fields, documented, option
from ..errors import UserError
from ..results.groups import dataset_name

DATASETS = ("cifar10", "cifar100", "folder", "synthetic")
IMAGE_SIZE = 32
PAD = 4  # §4.2: "4 pixels are padded on each side"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}


@documented
@dataclass
class DataConfig:
    """The dataset a run trains and tests on, and the subsets and split taken from it."""

    dataset: str = option("cifar10", help="cifar10 (§4.2), cifar100, folder (needs --data-dir) or synthetic "
                                          "(embedded).", panel=DATA)
    data_dir: str | None = option(None, help="Dataset folder (cifar download target, or train/<class>/ + "
                                             "test/<class>/ images).", panel=DATA,
                                  default_text="$RESDEPTH_DATA or ~/.cache/resdepth/data")
    train_size: int | None = option(None, help="Use a seeded, class-balanced subset of this many training images.",
                                    panel=DATA, default_text="all")
    test_size: int | None = option(None, help="Use a seeded, class-balanced subset of this many test images.",
                                   panel=DATA, default_text="all")
    # §4.2 tuned the schedule on a 45k/5k split, then trained on all 50k; most reproductions do without it
    val_size: int = option(0, help="Hold out this many training images as a validation split (5000: the paper's "
                                   "45k/5k).", panel=DATA, default_text="0, off")
    split_seed: int = option(0, help="Seed of the split and subsets, fixed apart from the run seed so every seed "
                                     "sees the same images.", panel=DATA, cli=False)
    augment: bool = option(True, help="Pad-4 random crop + flip (§4.2); --no-augment is a named deviation.",
                           flag="--augment/--no-augment", panel=DATA)
    # a label only: runs with other names but the same data compute the same thing (groups.comparable ignores it)
    dataset_name: str | None = option(None, help="Name of the dataset in tables, figure titles and file names, e.g. "
                                                 "cifar10-jpeg.", panel=DATA,
                                      default_text="the dataset, or an image folder's own name")
    # the demo's four small nets train in about a minute on 2 cores at these sizes
    synthetic_train: int = option(1500, help="Training images of --dataset synthetic.", panel=DATA)
    synthetic_test: int = option(500, help="Test images of --dataset synthetic.", panel=DATA)


@dataclass(frozen=True)
class LoadProgress:
    """A report from loading a dataset, for a display: `done` of `total` images of an image folder decoded so far,
    or a `notice`, one line the user should read. The last report (done == total) comes once every image is usable
    and kept: `cache` names the file later loads read (None where it could not be written)."""

    done: int = 0
    total: int = 0
    cache: Path | None = None
    notice: str | None = None


OnLoadProgress = Callable[[LoadProgress], None]
DECODE_REPORT_EVERY = 500  # images between progress reports: 120 reports for CIFAR-10, each a cheap display update


@dataclass
class Dataset:
    name: str
    classes: list[str]
    train_images: torch.Tensor  # (N, 3, 32, 32) uint8
    train_labels: torch.Tensor  # (N,) int64
    test_images: torch.Tensor
    test_labels: torch.Tensor
    val_images: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None
    # fingerprint() and pixel_mean(), computed once: every run of a sweep process, and every run `analyze` or
    # `construct` reads, asks the one dataset they share (each a pass over all its pixels)
    _computed: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __setattr__(self, name: str, value: Any) -> None:
        if name != "_computed" and "_computed" in self.__dict__:
            self._computed.clear()  # a split replaced (--val-size, --train-size): computed again when asked
        super().__setattr__(name, value)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to(self, device: torch.device) -> Dataset:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        tensors = (self.train_images, self.train_labels, self.test_images, self.test_labels, self.val_images,
                   self.val_labels)
        return Dataset(self.name, self.classes, *(move(t) for t in tensors))

    def fingerprint(self) -> str:
        """A short hash of the splits' labels and exact pixel sums: a resumed run checks its data is the same."""
        if "fingerprint" not in self._computed:
            self._computed["fingerprint"] = self.compute_fingerprint()
        return self._computed["fingerprint"]

    def compute_fingerprint(self) -> str:
        digest = hashlib.sha1()
        for tensor in (self.train_labels, self.test_labels, self.val_labels):
            if tensor is not None:
                digest.update(tensor.cpu().numpy().tobytes())
        for images in (self.train_images, self.test_images, self.val_images):
            if images is not None:  # integer sums: exact, so equal on every device
                digest.update(pixel_sums(images).cpu().numpy().tobytes())
        return digest.hexdigest()[:16]

    def splits(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The splits the dataset has, by name, training split first: train, test, and val with --val-size."""
        named = {"train": (self.train_images, self.train_labels), "test": (self.test_images, self.test_labels)}
        if self.val_images is not None and self.val_labels is not None:
            named["val"] = (self.val_images, self.val_labels)
        return named

    def pixel_mean(self) -> torch.Tensor:
        """Per-pixel mean (3, 32, 32) of the training split in [0, 1], the paper's mean subtraction."""
        if "pixel_mean" not in self._computed:
            sums = pixel_sums(self.train_images).double()
            self._computed["pixel_mean"] = (sums / (255.0 * len(self.train_images))).float()
        return self._computed["pixel_mean"].clone()  # the caller's own: nobody changes the kept one


def pixel_sums(images: torch.Tensor) -> torch.Tensor:
    """Exact per-pixel sums (3, 32, 32, int64) of uint8 images, in chunks: summing all at once would first
    widen the whole set to int64 (1.2 GB for CIFAR-10's training split)."""
    total = torch.zeros(images.shape[1:], dtype=torch.int64, device=images.device)
    for chunk in images.split(4096):
        total += chunk.sum(0, dtype=torch.int64)
    return total


DISPLAY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # --dataset-name: a title and a file name alike


def check_data_config(config: DataConfig) -> None:
    """Refuse values no dataset can satisfy, before anything is loaded or written."""
    check_fields(config)
    if config.dataset not in DATASETS:
        raise UserError(f"unknown dataset {config.dataset!r}: use one of {', '.join(DATASETS)}")
    for name in ("train_size", "test_size", "synthetic_train", "synthetic_test"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be a positive number of images, got {value}")
    if config.val_size < 0:
        raise UserError(f"--val-size must be 0 (no split) or a positive number of images, got {config.val_size}")
    if config.dataset_name is not None and not DISPLAY_NAME.fullmatch(config.dataset_name):
        raise UserError(f"--dataset-name {config.dataset_name!r} must be 1 to 64 letters, digits, '.', '_' or '-', "
                        "starting with a letter or digit (it names figure files too), e.g. cifar10-jpeg")


def expected_classes(config: DataConfig) -> int:
    """The number of classes the dataset will have, without loading it (a sweep checks its networks' outputs with
    it before anything runs): 100 for CIFAR-100, an image folder's class folders, else 10."""
    if config.dataset == "cifar100":
        return 100
    if config.dataset != "folder" or not config.data_dir:
        return 10
    try:  # as _class_files counts them: visible folders holding an image; a folder that cannot be read fails later
        folders = [d for d in (Path(config.data_dir) / "train").iterdir() if d.is_dir() and not d.name.startswith(".")]
        return sum(any(p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") for p in d.iterdir())
                   for d in folders) or 10
    except OSError:
        return 10


CIFAR_FILES = {"cifar10": ("cifar-10-batches-py", "cifar-10-python.tar.gz"),  # torchvision's folder and archive
               "cifar100": ("cifar-100-python", "cifar-100-python.tar.gz")}
CIFAR_SIZES = (50_000, 10_000)  # training and test images of CIFAR-10 and CIFAR-100


@dataclass(frozen=True)
class DataCheck:
    """Whether a dataset is here, judged without loading it (for a dry run): `ready` False says what is missing.
    The split sizes are as a run would see them (after --val-size, --train-size, --test-size), None if unknown."""

    ready: bool
    summary: str
    train_images: int | None = None
    test_images: int | None = None
    val_images: int = 0


def check_data_present(config: DataConfig) -> DataCheck:
    """Is the data there (CIFAR downloaded, an image folder complete and decoded)? Nothing is read or downloaded."""
    check_data_config(config)
    if config.dataset == "synthetic":
        return sized_check(config, True, "synthetic: embedded, generated in memory", config.synthetic_train,
                           config.synthetic_test)
    if config.dataset == "folder":
        return check_folder_present(config)
    root = Path(config.data_dir) if config.data_dir else default_data_dir()
    folder, archive = CIFAR_FILES[config.dataset]
    if (root / folder).is_dir() or (root / archive).is_file():
        return sized_check(config, True, f"{config.dataset}: in {root}", *CIFAR_SIZES)
    return sized_check(config, False, f"{config.dataset} is not in {root}: the sweep first downloads it (about 170 MB; "
                                      f"offline, put {archive} there or pass --data-dir)", *CIFAR_SIZES)


def check_folder_present(config: DataConfig) -> DataCheck:
    root = Path(config.data_dir or "")
    if not config.data_dir or not root.is_dir():
        return DataCheck(False, f"--data-dir {config.data_dir} is not a folder" if config.data_dir else
                         "--dataset folder needs --data-dir PATH")
    try:
        files = {split: _class_files(root, split) for split in ("train", "test")}
    except UserError as exc:
        return DataCheck(False, str(exc))
    check_same_classes(root, files)  # nothing a run does would mend it: refused, as the run refuses it
    train, test = (sum(len(paths) for paths in files[split].values()) for split in ("train", "test"))
    cache = _cache_path(root, files)
    cached = cache.is_file() and not cache.is_symlink()  # a link there is never read
    decoded = "decoded (cached)" if cached else f"decoded once before the first run, kept in {cache}"
    return sized_check(config, True, f"{root}: {train:,} training and {test:,} test images, {decoded}", train, test)


def sized_check(config: DataConfig, ready: bool, summary: str, train: int, test: int) -> DataCheck:
    """The split sizes a run sees: the validation split comes out of the training images, then the subsets. Split
    options these sizes cannot satisfy are refused here as loading refuses them (a dry run checks what a run does)."""
    check_split_sizes(config, train, test, expected_classes(config))
    train -= config.val_size
    return DataCheck(ready, summary, min(train, config.train_size or train), min(test, config.test_size or test),
                     config.val_size)


def check_split_sizes(config: DataConfig, train: int, test: int, classes: int) -> None:
    """Refuse --val-size, --train-size and --test-size that a dataset of train and test images in classes classes
    cannot satisfy: a run when it loads the data, a dry run from the counts (`sized_check`)."""
    if config.val_size and config.val_size >= train:
        raise UserError(f"--val-size {config.val_size} leaves no training images (the training set has {train})")
    named = dataset_name({"data": asdict(config)})  # as tables and figures name it
    for name, images, after in (("train_size", train - config.val_size, " after --val-size" if config.val_size else ""),
                                ("test_size", test, "")):
        if (getattr(config, name) or 0) > images:
            split = name.split("_")[0]
            raise UserError(f"--{name.replace('_', '-')} {getattr(config, name)} is more than the {images} "
                            f"{split} images of {named}{after}: ask for at most {images}, or leave it out for all")
    if config.train_size is not None and config.train_size < classes:
        raise UserError(f"--train-size {config.train_size} is fewer images than the {classes} classes of "
                        f"{named}: ask for at least one image per class, or leave it out for all")


def load_dataset(config: DataConfig, on_progress: OnLoadProgress = lambda _: None) -> Dataset:
    """The configured dataset on the CPU, with validation split and subsets applied. `on_progress` hears how the
    decoding of an image folder advances and its notices (images converted to RGB); other datasets load silently.

    The last synthetic or CIFAR set loaded is kept in memory: a sweep's fail-fast check and its in-process cells
    share one copy instead of generating or reading it again per cell. An image folder may change between
    calls, so it is listed every time (its decoded images are cached on disk, keyed by the files' sizes and
    times). Callers must not change the returned tensors in place.
    """
    check_data_config(config)
    if config.dataset == "folder":
        if not config.data_dir:
            raise UserError("--dataset folder needs --data-dir PATH holding train/<class>/* and test/<class>/* images")
        return _prepare(config, load_image_folder(Path(config.data_dir), on_progress))
    return _load_cached(tuple(asdict(config).items()))


@functools.lru_cache(maxsize=1)
def _load_cached(key: tuple[tuple[str, Any], ...]) -> Dataset:
    config = DataConfig(**dict(key))
    return _prepare(config, _load_raw(config))


def _prepare(config: DataConfig, data: Dataset) -> Dataset:
    check_split_sizes(config, len(data.train_labels), len(data.test_labels), data.num_classes)
    if config.val_size:
        val = balanced_subset(data.train_labels, config.val_size, config.split_seed)
        keep = torch.ones(len(data.train_labels), dtype=torch.bool)
        keep[val] = False
        data.val_images, data.val_labels = data.train_images[val], data.train_labels[val]
        data.train_images, data.train_labels = data.train_images[keep], data.train_labels[keep]
    if config.train_size is not None and config.train_size < len(data.train_labels):
        pick = balanced_subset(data.train_labels, config.train_size, config.split_seed + 1)
        data.train_images, data.train_labels = data.train_images[pick], data.train_labels[pick]
    if config.test_size is not None and config.test_size < len(data.test_labels):
        pick = balanced_subset(data.test_labels, config.test_size, config.split_seed + 2)
        data.test_images, data.test_labels = data.test_images[pick], data.test_labels[pick]
    return data


def _load_raw(config: DataConfig) -> Dataset:
    """Synthetic or CIFAR data as it comes (image folders are listed on every load, in `load_dataset`)."""
    if config.dataset == "synthetic":
        return make_synthetic(config.synthetic_train, config.synthetic_test)
    return load_torchvision_cifar(config.dataset, Path(config.data_dir) if config.data_dir else default_data_dir())


def balanced_subset(labels: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """Sorted indices of a seeded subset with the classes as equal in number as `size` allows."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=generator)
    shuffled = labels[order]
    rank = torch.zeros(len(labels), dtype=torch.long)
    for cls in shuffled.unique():
        where = (shuffled == cls).nonzero().flatten()
        rank[where] = torch.arange(len(where))
    # Taking items by rank within class (first of each class, then second ...) keeps the classes balanced.
    by_rank = torch.argsort(rank, stable=True)
    return order[by_rank[:size]].sort().values


# ---------------------------------------------------------------------------------------------- augmentation
def normalize(images: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """uint8 images to float in [0, 1] minus the per-pixel training mean (no std division, as in §4.2)."""
    return images.float().div_(255.0).sub_(mean)


def model_inputs(images: torch.Tensor, mean: torch.Tensor, generators: list[torch.Generator], augment: bool,
                 channels_last: bool) -> torch.Tensor:
    """The (K, B, 3, H, W) inputs of K models' steps (a single run: K = 1) from their images (K*B, 3, H, W) uint8,
    model k's B images k-th: §4.2's augmentation, each model's from its own generator, or (--no-augment) the
    images as they are; laid out as the network reads them."""
    if augment:
        return augment_models(images, mean, generators, channels_last)
    return stack_models(images, mean, len(generators), channels_last)


def crop_draws(batch: int, generator: torch.Generator, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch's random crop offsets (2, batch) and flips (batch,), drawn from its model's generator in the order
    every version of resdepth has drawn them: a run's augmentation stream is the same whoever trains it."""
    offsets = torch.randint(0, 2 * PAD + 1, (2, batch), generator=generator, device=device)
    flip = torch.rand(batch, generator=generator, device=device) < 0.5
    return offsets, flip


def augment_models(images: torch.Tensor, mean: torch.Tensor, generators: list[torch.Generator],
                   channels_last: bool) -> torch.Tensor:
    """§4.2 augmentation of K models' batches at once (mean-subtract, zero-pad 4, random 32x32 crop, random flip):
    images (K*B, 3, H, W) uint8, model k's B images k-th, each model's crops and flips from its own generator.
    Returns (K, B, 3, H, W): each model's batch exactly as it is augmented alone (K = 1), in one gather for all K
    (a fused step's K augmentations cost one kernel, not K)."""
    models, device = len(generators), images.device
    batch = images.shape[0] // models
    draws = [crop_draws(batch, generator, device) for generator in generators]
    offsets = torch.cat([offsets for offsets, _ in draws], dim=1)
    flip = torch.cat([flip for _, flip in draws])
    steps = torch.arange(IMAGE_SIZE, device=device)
    rows = offsets[0, :, None] + steps
    cols = offsets[1, :, None] + torch.where(flip[:, None], IMAGE_SIZE - 1 - steps, steps)
    padded = F.pad(normalize(images, mean), (PAD, PAD, PAD, PAD))
    return gather_models(padded, rows.view(models, batch, -1), cols.view(models, batch, -1), channels_last)


def stack_models(images: torch.Tensor, mean: torch.Tensor, models: int, channels_last: bool) -> torch.Tensor:
    """K models' batches without augmentation (--no-augment), laid out as `augment_models` lays them out."""
    batch, device = images.shape[0] // models, images.device
    whole = torch.arange(IMAGE_SIZE, device=device).expand(models, batch, IMAGE_SIZE)
    return gather_models(normalize(images, mean), whole, whole, channels_last)


def gather_models(images: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """The (K, B, 3, H, W) windows rows (K, B, H) x cols (K, B, W) of images (K*B, 3, H', W'). channels_last: its
    memory is NHWC, and for K > 1 that of (B, K*3, H, W), the layout the grouped convolutions of a fused step read
    natively."""
    models, batch = rows.shape[:2]
    device = images.device
    sample = torch.arange(models * batch, device=device).view(models, batch, 1, 1, 1)
    channel = torch.arange(images.shape[1], device=device).view(1, 1, -1, 1, 1)
    windows = images[sample, channel, rows[:, :, None, :, None], cols[:, :, None, None, :]]
    if not channels_last:
        return windows
    # into (B, H, W, K, C) by one stack: on the CPU (K = 4, B = 128) gathering straight into that layout took 1.4x
    # the time of this gather and stack, and permute().contiguous() 4x the stack's
    return torch.stack(list(windows.permute(0, 1, 3, 4, 2)), dim=3).permute(3, 0, 4, 1, 2)


# ---------------------------------------------------------------------------------------------- synthetic
SYNTHETIC_CLASSES = [f"{band}-{angle}deg" for band in ("wide", "fine") for angle in (0, 36, 72, 108, 144)]


def make_synthetic(train_size: int, test_size: int, seed: int = 0) -> Dataset:
    """A deterministic 10-class 32x32 RGB task: stripes whose orientation (5 angles) and spatial frequency
    (wide or fine) give the class, under random phase, colours, small rotation jitter and pixel noise.
    Colour never gives the class away, so a network has to learn spatial filters; small nets get well below
    chance (90% error) within a few epochs."""
    generator = torch.Generator().manual_seed(seed)
    train_images, train_labels = _synthetic_images(train_size, generator)
    test_images, test_labels = _synthetic_images(test_size, generator)
    return Dataset("synthetic", SYNTHETIC_CLASSES, train_images, train_labels, test_images, test_labels)


def _synthetic_images(count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    labels = (torch.arange(count) % 10)[torch.randperm(count, generator=generator)]
    rand = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    axis = torch.linspace(-1, 1, IMAGE_SIZE)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    angle = (labels % 5).float() * math.pi / 5 + (rand(count) - 0.5) * 0.2
    cycles = torch.where(labels < 5, 2.0, 4.5) + 0.6 * rand(count)  # cycles per half image
    along = x * torch.cos(angle)[:, None, None] + y * torch.sin(angle)[:, None, None]
    pattern = torch.sin(math.pi * cycles[:, None, None] * along + 2 * math.pi * rand(count)[:, None, None])
    foreground, background = rand(count, 3), rand(count, 3)
    blend = (pattern[:, None] + 1) / 2
    images = blend * foreground[:, :, None, None] + (1 - blend) * background[:, :, None, None]
    images = images + 0.08 * torch.randn(images.shape, generator=generator)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8), labels


# ---------------------------------------------------------------------------------------------- CIFAR via torchvision
def default_data_dir() -> Path:
    return Path(os.environ.get("RESDEPTH_DATA", Path.home() / ".cache" / "resdepth" / "data"))


def load_torchvision_cifar(name: str, root: Path) -> Dataset:
    """CIFAR-10/100 from torchvision: downloaded with its checksum into root, or read from there."""
    from torchvision import datasets
    from torchvision.datasets.utils import check_integrity

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    archive = root / cls.filename
    try:
        root.mkdir(parents=True, exist_ok=True)
        train = cls(str(root), train=True, download=True)
        test = cls(str(root), train=False, download=True)
    except (OSError, RuntimeError) as exc:
        if root.is_dir() and not os.access(root, os.W_OK) and not archive.exists():
            raise UserError(f"{name} is not in {root} and that folder is not writable: pass --data-dir to a "
                            "writable folder") from None
        if archive.is_file() and not check_integrity(str(archive), cls.tgz_md5):  # so torchvision fetched it again
            raise UserError(f"{archive} is damaged or incomplete (its checksum does not match) and a new copy could "
                            f"not be downloaded ({type(exc).__name__}): replace it with a good copy from "
                            f"{cls.url}") from None
        raise UserError(
            f"{name} is not in {root} and could not be downloaded ({type(exc).__name__}): put {cls.filename} "
            f"(from {cls.url}) in {root}, pass --data-dir to a folder holding it, or use --dataset folder/synthetic"
        ) from None
    as_tensor = lambda d: torch.from_numpy(d.data).permute(0, 3, 1, 2).contiguous()  # noqa: E731
    return Dataset(name, list(train.classes), as_tensor(train), torch.tensor(train.targets),
                   as_tensor(test), torch.tensor(test.targets))


# ---------------------------------------------------------------------------------------------- image folders
CACHE_BYTES_PER_IMAGE = 3 * 32 * 32 + 8  # uint8 pixels and an int64 label
CACHE_SLACK_BYTES = 2**20  # class names, notices and the zip's own records


def read_cache(cache: Path, images: int) -> dict[str, Any]:
    """The decoded-images cache, read as a results folder's files are (no link followed, weights only), and refused
    before it is unpacked when it declares more bytes than its folder's images can fill (a deflate bomb)."""
    from ..results.runs import check_unpacked_size, open_folder_file

    limit = images * CACHE_BYTES_PER_IMAGE + CACHE_SLACK_BYTES
    with open_folder_file(cache, limit) as handle:
        check_unpacked_size(handle, cache, "decode the images again", limit)
        return torch.load(handle, map_location="cpu", weights_only=True)


CACHE_KEYS = {"name", "classes", "train_images", "train_labels", "test_images", "test_labels", "notices"}
MAX_NOTICES, MAX_NOTICE_CHARS = 4, 8192  # resdepth writes one notice at most: a line and a path


class BrokenCache(ValueError):
    """A cache whose contents are not what decoding this folder gives: decoded again, as a cache that cannot be read."""


def checked_cache(saved: Any, root: Path, files: dict[str, dict[str, list[Path]]],
                  classes: list[str]) -> tuple[Dataset, list[str]]:
    """The dataset and notices a cache holds, when they are what decoding the folder's files would give: the same
    keys, the folder's classes, one (3, 32, 32) uint8 image per listed file and int64 labels that follow the files
    class by class (a planted cache with labels of 99 ended a run in an IndexError), and notices that are a few
    lines of text. Anything else raises BrokenCache. The name is the folder's own, never the cache's."""
    from ..results.runs import printable

    if not isinstance(saved, dict) or set(saved) != CACHE_KEYS:
        raise BrokenCache("not the keys of a cache")
    if type(saved["classes"]) is not list or saved["classes"] != classes \
            or not all(type(name) is str for name in saved["classes"]):
        raise BrokenCache("other classes")
    tensors = {}
    for split in ("train", "test"):
        counts = [len(files[split][cls]) for cls in classes]
        expected = torch.repeat_interleave(torch.arange(len(classes), dtype=torch.int64), torch.tensor(counts))
        images, labels = saved[f"{split}_images"], saved[f"{split}_labels"]
        for tensor, dtype, shape in ((images, torch.uint8, (sum(counts), 3, IMAGE_SIZE, IMAGE_SIZE)),
                                     (labels, torch.int64, (sum(counts),))):
            if not (type(tensor) is torch.Tensor and tensor.dtype == dtype and tuple(tensor.shape) == shape
                    and tensor.layout == torch.strided and tensor.device.type == "cpu" and tensor.is_contiguous()):
                raise BrokenCache(f"{split} tensors of another type or shape")
        if not torch.equal(labels, expected):
            raise BrokenCache(f"{split} labels that do not follow the files")
        tensors[f"{split}_images"], tensors[f"{split}_labels"] = images, labels
    notices = saved["notices"]
    if type(notices) is not list or len(notices) > MAX_NOTICES \
            or not all(type(n) is str and len(n) <= MAX_NOTICE_CHARS for n in notices):
        raise BrokenCache("notices that are not lines of text")
    return Dataset(root.name, list(classes), **tensors), [printable(notice) for notice in notices]


def load_image_folder(root: Path, on_progress: OnLoadProgress = lambda _: None) -> Dataset:
    """train/<class>/* and test/<class>/* images of 32x32, decoded once and cached as a tensor file."""
    if not root.is_dir():
        raise UserError(f"--data-dir {root} is not a readable folder: it must hold train/<class>/ and "
                        "test/<class>/ images")
    files = {split: _class_files(root, split) for split in ("train", "test")}
    classes = check_same_classes(root, files)
    cache = _cache_path(root, files)
    if os.path.lexists(cache):  # a link there too (exists() follows it): read_cache refuses it, and it is removed
        try:
            saved = read_cache(cache, sum(len(paths) for split in files.values() for paths in split.values()))
            dataset, notices = checked_cache(saved, root, files, classes)
        except Exception:  # noqa: BLE001 - a broken, planted or oversized cache is only a lost speed-up: decode again
            with contextlib.suppress(OSError):  # unlink removes a link itself, never its target
                cache.unlink(missing_ok=True)
        else:
            for notice in notices:  # said again on every load: the user may not have seen the first one
                on_progress(LoadProgress(notice=notice))
            return dataset
    decoder = FolderDecoder(sum(len(paths) for split in files.values() for paths in split.values()), cache, on_progress)
    tensors = {}
    for split in ("train", "test"):
        images, labels = decoder.decode_split(files[split], classes)
        tensors[f"{split}_images"], tensors[f"{split}_labels"] = images, labels
    decoder.check_all_usable()
    dataset = Dataset(root.name, classes, **tensors)
    notices = [decoder.conversion_notice()] if decoder.converted else []
    for notice in notices:
        on_progress(LoadProgress(notice=notice))
    kept: Path | None = cache
    try:
        save_cache({"name": dataset.name, "classes": classes, **tensors, "notices": notices}, cache)
        remove_older_caches(cache)
    except OSError as exc:  # read-only data and cache: decoding again next time is slower but correct
        kept = None
        on_progress(LoadProgress(notice=f"could not keep the decoded images in {cache} ({exc.strerror or exc}): "
                                        "the folder is decoded again next time"))
    on_progress(LoadProgress(decoder.total, decoder.total, kept))
    return dataset


def save_cache(saved: dict[str, Any], cache: Path) -> None:
    """The decoded images written to a new temp file beside the cache and renamed onto its name: a link planted at
    that predictable name is replaced, never written through (torch.save(..., cache) created or overwrote the file a
    dangling link named, outside the data folder). The temp file is removed if anything fails."""
    from ..results.runs import create_temp_beside

    fd, tmp = create_temp_beside(cache)  # O_EXCL: a new file, never a link's target; mode 0666 less the umask
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(saved, handle)
        os.replace(tmp, cache)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


IMAGES_COUNTED = "images (" + ", ".join(sorted(IMAGE_SUFFIXES)) + ") directly inside it"


def check_inside(path: Path, root: Path) -> None:
    """Refuse a split folder, class folder or image that leads out of the data folder (a link to someone's private
    images would be decoded, and its pixels kept in the folder's cache for whoever planted it to read). Links that
    stay inside the folder are read. `root` is the data folder, resolved."""
    target = Path(os.path.realpath(path))  # realpath, not resolve(): a link loop is left to fail as unreadable
    if not target.is_relative_to(root):
        raise UserError(f"{path} is a link to {target}, outside the data folder {root}: resdepth reads only files "
                        "inside it (a link may lead to someone else's files); copy the files in instead of linking "
                        "them")


def _class_files(root: Path, split: str) -> dict[str, list[Path]]:
    folder = root / split
    if not folder.is_dir():
        raise UserError(f"{folder} is missing: --dataset folder needs {root}/train/<class>/ and {root}/test/<class>/")
    inside = Path(os.path.realpath(root))
    check_inside(folder, inside)
    # hidden files are never images: macOS leaves ._name.jpg beside name.jpg on foreign disks
    folders = [d for d in sorted(listed(folder)) if d.is_dir() and not d.name.startswith(".")]
    classes = {}
    for d in folders:
        check_inside(d, inside)  # a class folder inside the folder: a file in it that is not a link is inside too
        classes[d.name] = sorted(p for p in listed(d) if p.suffix.lower() in IMAGE_SUFFIXES
                                 and not p.name.startswith("."))
        for path in classes[d.name]:
            if path.is_symlink():
                check_inside(path, inside)
    classes = {name: paths for name, paths in classes.items() if paths}
    if not classes:
        raise UserError(f"{folder} holds no class folders with {IMAGES_COUNTED}")
    return classes


def listed(folder: Path) -> list[Path]:
    """A data folder's entries, or one line saying why it cannot be read."""
    try:
        return list(folder.iterdir())
    except OSError as exc:
        raise UserError(f"cannot read {folder} ({exc.strerror or exc}): check its permissions") from None


def check_same_classes(root: Path, files: dict[str, dict[str, list[Path]]]) -> list[str]:
    """The classes, sorted: the same class folders with images in train/ and test/, at least two of them."""
    classes = sorted(files["train"])
    if sorted(files["test"]) != classes:
        only = {split: sorted(set(files[split]) - set(files[other]))
                for split, other in (("train", "test"), ("test", "train"))}
        differ = "; ".join(f"only in {split}: {', '.join(names)}" for split, names in only.items() if names)
        raise UserError(f"{root}/train and {root}/test must hold the same class folders with images ({differ}); a "
                        f"class folder counts once it holds {IMAGES_COUNTED}")
    if len(classes) < 2:
        raise UserError(f"{root} holds one class with images ({classes[0]}): a classifier needs at least two class "
                        "folders in train/ and test/")
    return classes


CACHE_PREFIX = ".resdepth-cache-"


def _cache_path(root: Path, files: dict[str, dict[str, list[Path]]]) -> Path:
    """Where the folder's decoded images are kept: in the folder, named by its files' names, sizes and times (an
    edit makes a new one); for a read-only folder, in ~/.cache/resdepth/folders, named by the folder's own path too,
    since two folders of the same file names and times (an archive's fixed dates) are not the same images."""
    digest = hashlib.sha1()
    for split in sorted(files):
        for cls in sorted(files[split]):
            for path in files[split][cls]:
                try:
                    stat = path.stat()
                except OSError as exc:
                    raise UserError(f"cannot read {path} ({exc.strerror or exc}): a link to nothing? remove it or "
                                    "restore what it names") from None
                digest.update(f"{split}/{cls}/{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    if os.access(root, os.W_OK):
        return root / f"{CACHE_PREFIX}{digest.hexdigest()[:16]}.pt"
    fallback = Path.home() / ".cache" / "resdepth" / "folders"
    try:
        fallback.mkdir(parents=True, exist_ok=True)
    except OSError:
        pass  # no writable cache anywhere: save_cache fails and the folder is decoded again next time
    folder = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:12]
    return fallback / f"{CACHE_PREFIX}{folder}-{digest.hexdigest()[:16]}.pt"


STALE_TEMP_SECONDS = 3600  # a cache's temp file this old is a killed load's, not one being written


def remove_older_caches(cache: Path) -> None:
    """The caches this folder's earlier contents left (185 MB each for CIFAR-10): only the newest is ever read. The
    temp files of loads killed while writing the cache go too, once stale. unlink removes a link in their place,
    never what it names."""
    folder = cache.name.removeprefix(CACHE_PREFIX).rpartition("-")[0]  # '' beside the images; else the folder's hash
    pattern = f"{CACHE_PREFIX}{folder}-*.pt" if folder else f"{CACHE_PREFIX}*.pt"
    for old in cache.parent.glob(pattern):
        if old != cache:
            with contextlib.suppress(OSError):
                old.unlink()
    for temp in cache.parent.glob(f".{pattern}.*.tmp"):  # create_temp_beside's names: .<cache name>.<hex>.tmp
        with contextlib.suppress(OSError):
            if time.time() - temp.lstat().st_mtime > STALE_TEMP_SECONDS:
                temp.unlink()


MODE_NAMES = {"L": "grayscale", "LA": "grayscale with alpha", "RGBA": "RGBA", "P": "palette",
              "PA": "palette with alpha",
              "1": "black-and-white", "CMYK": "CMYK", "I;16": "16-bit grayscale", "I": "32-bit grayscale"}


FAILED_NAMED = 6  # images named in the message when several cannot be used (the count says how many in all)


class FolderDecoder:
    """Decodes an image folder's files into uint8 tensors, reporting its progress and counting the images that
    were not RGB (converted with PIL: gray copied to the three channels, an alpha channel dropped)."""

    def __init__(self, total: int, cache: Path, on_progress: OnLoadProgress):
        self.total, self.cache, self.on_progress = total, cache, on_progress
        self.done = 0
        self.converted: dict[str, int] = {}  # PIL mode -> images of that mode
        self.example: Path | None = None
        self.failed: list[tuple[Path, str]] = []  # every image that cannot be used, so one message names them all

    def decode_split(self, files: dict[str, list[Path]], classes: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        if self.done == 0:
            self.on_progress(LoadProgress(0, self.total, self.cache))
        for label, cls in enumerate(classes):
            for path in files[cls]:
                images.append(self.decode(path))
                labels.append(label)
                self.done += 1
                if self.done % DECODE_REPORT_EVERY == 0 and self.done < self.total:  # the last: once kept
                    self.on_progress(LoadProgress(self.done, self.total, self.cache))
        return torch.stack(images), torch.tensor(labels)

    def decode(self, path: Path) -> torch.Tensor:
        try:
            image, mode = decode_image(path)
        except UserError as exc:
            self.failed.append((path, str(exc)))
            return torch.zeros(3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)  # never trained on: the load fails
        if mode != "RGB":
            self.converted[mode] = self.converted.get(mode, 0) + 1
            self.example = self.example or path
        return image

    def check_all_usable(self) -> None:
        """One UserError for every image that cannot be used: the first one's reason, and the others' names."""
        if not self.failed:
            return
        first = self.failed[0][1]
        if len(self.failed) == 1:
            raise UserError(first)
        others = [str(path) for path, _ in self.failed[1:FAILED_NAMED]]
        more = len(self.failed) - FAILED_NAMED
        raise UserError(f"{len(self.failed)} images cannot be used. The first: {first}. The others: "
                        f"{', '.join(others)}{f' and {more} more' if more > 0 else ''}")

    def conversion_notice(self) -> str:
        kinds = ", ".join(f"{count} {MODE_NAMES.get(mode, mode)}" for mode, count in sorted(self.converted.items()))
        alpha = any("A" in mode for mode in self.converted)
        return (f"{sum(self.converted.values())} of {self.total} images were not RGB and were converted to RGB "
                f"({kinds}{'; alpha dropped' if alpha else ''}), e.g. {self.example}")


def decode_image(path: Path) -> tuple[torch.Tensor, str]:
    """One image file as a (3, 32, 32) uint8 RGB tensor, and the PIL mode it was stored in. The size is read from
    the header and checked before any pixel is decoded, so a file that declares a huge image (a decompression
    bomb) costs nothing."""
    try:
        # O_NONBLOCK: a FIFO named like an image hung the load in open(); only a regular file is decoded
        with os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb") as raw:
            if not stat.S_ISREG(os.fstat(raw.fileno()).st_mode):
                raise UserError(f"{path} is not a regular file (a FIFO, device or folder named like an image): "
                                "remove it")
            image, mode = _decode_open(raw, path)
        return image, mode
    except (PermissionError, FileNotFoundError) as exc:
        raise UserError(f"cannot read {path} ({exc.strerror}): check its permissions, or remove it") from None
    except OSError:  # a folder named like an image, a link loop
        raise UserError(f"cannot decode image {path}: remove it or convert it to PNG/JPEG") from None


def _decode_open(raw: Any, path: Path) -> tuple[torch.Tensor, str]:
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(raw) as handle:
            if handle.size != (IMAGE_SIZE, IMAGE_SIZE):
                width, height = handle.size
                raise UserError(f"{path} is {width}x{height}; resdepth needs 32x32 images (resize the folder first)")
            return torch.from_numpy(np.array(handle.convert("RGB"))).permute(2, 0, 1), handle.mode
    except (PermissionError, FileNotFoundError) as exc:
        raise UserError(f"cannot read {path} ({exc.strerror}): check its permissions, or remove it") from None
    except Image.DecompressionBombError:
        raise UserError(f"{path} declares an image too large to decode safely; resdepth needs 32x32 images "
                        "(remove it or resize the folder)") from None
    except (OSError, UnidentifiedImageError):
        raise UserError(f"cannot decode image {path}: remove it or convert it to PNG/JPEG") from None
