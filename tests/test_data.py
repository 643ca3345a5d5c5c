import re

import pytest
import torch
from PIL import Image

from resdepth.errors import UserError
from resdepth.train.data import (
    DataConfig,
    augment_models,
    balanced_subset,
    load_dataset,
    make_synthetic,
    normalize,
)


def test_synthetic_is_deterministic_and_balanced():
    a, b = make_synthetic(200, 50), make_synthetic(200, 50)
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.test_labels, b.test_labels)
    assert a.train_images.shape == (200, 3, 32, 32) and a.train_images.dtype == torch.uint8
    assert a.train_labels.bincount().tolist() == [20] * 10


def test_validation_split_and_subsets_have_the_asked_sizes_and_balance():
    config = DataConfig(dataset="synthetic", synthetic_train=1000, synthetic_test=300, val_size=200, train_size=500,
                        test_size=100)
    data = load_dataset(config)
    assert len(data.val_labels) == 200 and len(data.train_labels) == 500 and len(data.test_labels) == 100
    assert data.val_labels.bincount().tolist() == [20] * 10
    assert data.train_labels.bincount().tolist() == [50] * 10
    again = load_dataset(config)
    assert torch.equal(data.val_images, again.val_images) and torch.equal(data.train_images, again.train_images)
    # the validation images are held out: none of them is in the training split
    train_set = {bytes(img.numpy()) for img in data.train_images}
    assert not any(bytes(img.numpy()) in train_set for img in data.val_images)


def test_balanced_subset_with_remainder():
    labels = torch.arange(100) % 10
    pick = balanced_subset(labels, 25, seed=3)
    counts = labels[pick].bincount(minlength=10)
    assert len(pick) == 25 and counts.max() - counts.min() <= 1


def test_bad_sizes_are_user_errors():
    with pytest.raises(UserError, match="--val-size"):
        load_dataset(DataConfig(dataset="synthetic", synthetic_train=100, val_size=100))
    with pytest.raises(UserError, match="--train-size"):
        load_dataset(DataConfig(dataset="synthetic", train_size=0))
    with pytest.raises(UserError, match="unknown dataset"):
        load_dataset(DataConfig(dataset="imagenet"))


def test_augment_is_a_padded_crop_with_optional_flip():
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    mean = torch.full((3, 32, 32), 0.5)
    generator = torch.Generator().manual_seed(0)
    out = augment_models(images, mean, [generator], channels_last=False)[0]  # one model's batch
    assert out.shape == (64, 3, 32, 32)
    # replay the same random draws and check every image against a hand-made crop
    replay = torch.Generator().manual_seed(0)
    offsets = torch.randint(0, 9, (2, 64), generator=replay)
    flips = torch.rand(64, generator=replay) < 0.5
    padded = torch.nn.functional.pad(normalize(images, mean), (4, 4, 4, 4))
    for i in range(64):
        y, x = offsets[0, i], offsets[1, i]
        expected = padded[i, :, y:y + 32, x:x + 32]
        expected = expected.flip(-1) if flips[i] else expected
        assert torch.equal(out[i], expected)
    assert flips.any() and (~flips).any() and (offsets != 4).any()


def test_normalize_subtracts_the_per_pixel_training_mean():
    data = make_synthetic(100, 10)
    mean = data.pixel_mean()
    assert mean.shape == (3, 32, 32)
    assert normalize(data.train_images, mean).mean(0).abs().max() < 1e-5


def write_folder(root, size=32, per_class=3):
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class):
                colour = (200, 10, 10) if cls == "cat" else (10, 10, 200)
                Image.new("RGB", (size, size), colour).save(root / split / cls / f"{i}.png")


def test_image_folder_loads_and_caches(tmp_path):
    write_folder(tmp_path)
    data = load_dataset(DataConfig(dataset="folder", data_dir=str(tmp_path)))
    assert data.classes == ["cat", "dog"] and data.train_images.shape == (6, 3, 32, 32)
    assert data.train_images[0, 0, 0, 0] == 200 and data.train_labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert list(tmp_path.glob(".resdepth-cache-*.pt"))
    again = load_dataset(DataConfig(dataset="folder", data_dir=str(tmp_path)))
    assert torch.equal(again.train_images, data.train_images)


def test_image_folder_refuses_other_sizes(tmp_path):
    write_folder(tmp_path, size=28)
    with pytest.raises(UserError, match="32x32"):
        load_dataset(DataConfig(dataset="folder", data_dir=str(tmp_path)))


def test_every_image_that_cannot_be_used_is_counted_and_the_first_ones_named(tmp_path):
    # only the first was named: a folder with ten bad files took ten runs to mend
    write_folder(tmp_path, per_class=5)
    bad = [tmp_path / split / "dog" / f"{i}.png" for split in ("train", "test") for i in range(4)]
    for path in bad:
        path.write_bytes(b"not an image")
    with pytest.raises(UserError) as refused:
        load_dataset(DataConfig(dataset="folder", data_dir=str(tmp_path)))
    message = str(refused.value)
    assert message.startswith(f"8 images cannot be used. The first: cannot decode image {bad[0]}")
    assert all(str(path) in message for path in bad[:6]) and str(bad[6]) not in message
    assert message.endswith(" and 2 more") and "\n" not in message
    assert not list(tmp_path.glob(".resdepth-cache-*.pt"))  # nothing half-decoded is kept


def test_image_folder_ignores_hidden_files_and_names_classes_that_differ(tmp_path):
    write_folder(tmp_path)
    (tmp_path / "train" / "cat" / "._0.png").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")  # not an image
    data = load_dataset(DataConfig(dataset="folder", data_dir=str(tmp_path)))
    assert data.train_images.shape == (6, 3, 32, 32)
    for image in (tmp_path / "train" / "dog").iterdir():
        image.unlink()  # an emptied class folder drops the class from train only
    with pytest.raises(UserError, match="same class folders with images \\(only in test: dog\\)"):
        load_dataset(DataConfig(dataset="folder", data_dir=str(tmp_path)))


def test_image_folder_missing_split(tmp_path):
    write_folder(tmp_path)
    for image in (tmp_path / "test" / "cat").iterdir():
        image.unlink()
    (tmp_path / "test" / "cat").rmdir()
    (tmp_path / "test" / "dog").rename(tmp_path / "elsewhere")
    (tmp_path / "test").rmdir()  # a complete train split, no test split at all
    with pytest.raises(UserError, match=re.escape(f"{tmp_path / 'test'} is missing: --dataset folder needs")):
        load_dataset(DataConfig(dataset="folder", data_dir=str(tmp_path)))


def test_cifar_offline_without_a_copy_says_where_to_put_it(tmp_path, monkeypatch):
    import urllib.request

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(UserError, match=r"cifar-10-python\.tar\.gz") as info:
        load_dataset(DataConfig(dataset="cifar10", data_dir=str(tmp_path)))
    assert str(tmp_path) in str(info.value) and "--dataset" in str(info.value)
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"half a download")
    with pytest.raises(UserError, match=r"cifar-10-python\.tar\.gz is damaged or incomplete \(its checksum does not "
                                        r"match\) and a new copy could not be downloaded \(URLError\)"):
        load_dataset(DataConfig(dataset="cifar10", data_dir=str(tmp_path)))


def test_decoding_a_folder_reports_progress_its_cache_and_converted_images(tmp_path):
    from resdepth.train.data import LoadProgress

    write_folder(tmp_path)
    Image.new("L", (32, 32), 90).save(tmp_path / "train" / "cat" / "gray.png")
    Image.new("RGBA", (32, 32), (10, 200, 10, 0)).save(tmp_path / "test" / "dog" / "clear.png")
    events: list[LoadProgress] = []
    data = load_dataset(DataConfig(dataset="folder", data_dir=str(tmp_path)), on_progress=events.append)
    progress = [e for e in events if e.notice is None]
    assert progress[0].done == 0 and progress[-1].done == progress[-1].total == 14
    cache = progress[-1].cache  # named by the last report, once kept
    assert cache is not None and cache.parent == tmp_path and cache.exists()
    notices = [e.notice for e in events if e.notice]
    assert len(notices) == 1 and "2 of 14 images were not RGB" in notices[0]
    assert "1 grayscale" in notices[0] and "1 RGBA" in notices[0] and "alpha dropped" in notices[0]
    gray = data.train_images[data.train_labels == 0][-1]
    assert gray.unique().tolist() == [90]  # gray copied to the three channels
    again: list[LoadProgress] = []
    load_dataset(DataConfig(dataset="folder", data_dir=str(tmp_path)), on_progress=again.append)
    assert [e.notice for e in again] == notices  # from the cache: no decoding, the notice said again


def test_the_cli_shows_where_the_decoded_images_go_and_the_conversion_note(tmp_path, run_cli):
    data = tmp_path / "data"
    write_folder(data, per_class=4)
    Image.new("LA", (32, 32)).save(data / "train" / "dog" / "gray-alpha.png")
    code, out, err = run_cli("train", "--depth", "8", "--dataset", "folder", "--data-dir", str(data), "--iterations",
                             "1",
                         "--batch-size", "4", "--device", "cpu", "--out", str(tmp_path / "r"))
    assert code == 0, err
    text = " ".join(out.split())
    assert "decoding 17 images" in text and "note: 1 of 17 images were not RGB" in text
    assert re.search(r"decoded 17 images in \d+ s; they are kept in " + re.escape(str(data / ".resdepth-cache-")), text)


def test_a_refused_folder_is_not_said_to_be_kept(tmp_path, run_cli):
    data = tmp_path / "data"
    write_folder(data, per_class=4)
    (data / "train" / "dog" / "broken.png").write_bytes(b"not an image")
    code, out, err = run_cli("train", "--depth", "8", "--dataset", "folder", "--data-dir", str(data), "--iterations",
                             "1", "--batch-size", "4", "--device", "cpu", "--out", str(tmp_path / "r"))
    assert code == 2 and "cannot decode image" in err and "broken.png" in err
    assert "decoding 17 images" in out and "kept" not in out and "decoded" not in out
    assert not list(data.glob(".resdepth-cache-*"))


def test_a_dry_run_says_whether_the_data_is_here(tmp_path):
    from resdepth.train.data import check_data_present

    missing = check_data_present(DataConfig(dataset="cifar10", data_dir=str(tmp_path)))
    assert not missing.ready and "cifar-10-python.tar.gz" in missing.summary and missing.train_images == 50_000
    (tmp_path / "cifar-10-batches-py").mkdir()
    assert check_data_present(DataConfig(dataset="cifar10", data_dir=str(tmp_path),
                                         val_size=5000)).train_images == 45_000
    assert not check_data_present(DataConfig(dataset="folder", data_dir=str(tmp_path / "none"))).ready
    write_folder(tmp_path / "f")
    folder = check_data_present(DataConfig(dataset="folder", data_dir=str(tmp_path / "f"), train_size=4))
    assert folder.ready and folder.train_images == 4 and folder.test_images == 6 and "decoded once" in folder.summary
    load_dataset(DataConfig(dataset="folder", data_dir=str(tmp_path / "f")))
    assert "decoded (cached)" in check_data_present(DataConfig(dataset="folder", data_dir=str(tmp_path / "f"))).summary


def test_fingerprint_and_mean_are_computed_once_and_again_when_a_split_is_replaced():
    data = make_synthetic(256, 64)
    fingerprint, mean = data.fingerprint(), data.pixel_mean()
    mean.zero_()  # the caller's copy: the kept mean is not changed through it
    assert data.fingerprint() == fingerprint and data.pixel_mean().sum() > 0
    data.train_images = data.train_images.flip(0)[:128]
    assert data.fingerprint() != fingerprint
    expected = (data.train_images.double().sum(0) / (255.0 * 128)).float()
    torch.testing.assert_close(data.pixel_mean(), expected)


def test_a_planted_cache_is_decoded_again_never_inflated_nor_followed(tmp_path, monkeypatch):
    import zipfile

    import resdepth.train.data

    loaded = []
    real_load = torch.load
    monkeypatch.setattr(resdepth.train.data.torch, "load", lambda *a, **k: loaded.append(a) or real_load(*a, **k))

    write_folder(tmp_path)
    first: list = []
    data = load_dataset(DataConfig(dataset="folder", data_dir=str(tmp_path)), on_progress=first.append)
    cache = next(e.cache for e in first if e.cache is not None)
    cached: list = []
    load_dataset(DataConfig(dataset="folder", data_dir=str(tmp_path)), on_progress=cached.append)
    assert not [e for e in cached if e.notice is None]  # the cache is used: nothing decoded

    cache.unlink()  # a deflate bomb: 64 MiB of zeros in a few kB, far more than 12 images can fill
    with zipfile.ZipFile(cache, "w", compression=zipfile.ZIP_DEFLATED) as bomb:
        bomb.writestr("archive/data.pkl", bytes(64 * 2**20))
    assert cache.stat().st_size < 2**20
    decoded: list = []
    loaded.clear()
    again = load_dataset(DataConfig(dataset="folder", data_dir=str(tmp_path)), on_progress=decoded.append)
    assert [e for e in decoded if e.notice is None] and torch.equal(again.train_images, data.train_images)
    assert not loaded  # refused from the zip's own records, before torch inflated anything

    private = tmp_path.parent / "private.pt"  # a link in the cache's place is not read through
    private.write_bytes(cache.read_bytes())
    cache.unlink()
    cache.symlink_to(private)
    followed: list = []
    load_dataset(DataConfig(dataset="folder", data_dir=str(tmp_path)), on_progress=followed.append)
    assert [e for e in followed if e.notice is None] and private.exists()


# ------------------------------------------------------------------------------------- folders as users have them
def folder_config(root, **changes):
    return DataConfig(dataset="folder", data_dir=str(root), **changes)


def test_a_link_to_nothing_or_a_folder_that_cannot_be_read_is_one_line(tmp_path, monkeypatch):
    # both were tracebacks (FileNotFoundError from stat, PermissionError from iterdir), in train and --dry-run
    write_folder(tmp_path)
    (tmp_path / "train" / "cat" / "zz.png").symlink_to(tmp_path / "gone.png")
    with pytest.raises(UserError, match=re.escape(f"cannot read {tmp_path / 'train' / 'cat' / 'zz.png'} (No such")):
        load_dataset(folder_config(tmp_path))
    (tmp_path / "train" / "cat" / "zz.png").unlink()
    from pathlib import Path

    real = Path.iterdir

    def refused(self):
        if self.name == "dog":
            raise PermissionError(13, "Permission denied")
        return real(self)

    monkeypatch.setattr(Path, "iterdir", refused)  # chmod 000 binds no root, whom CI may run as
    with pytest.raises(UserError, match=r"cannot read .*dog \(Permission denied\): check its permissions"):
        load_dataset(folder_config(tmp_path))


def test_an_image_that_cannot_be_read_is_not_called_undecodable(tmp_path):
    from resdepth.train.data import decode_image

    with pytest.raises(UserError, match=r"cannot read .*\(No such file or directory\): check its permissions, or "
                                        r"remove it"):
        decode_image(tmp_path / "gone.png")


def test_one_class_is_refused_and_the_dry_run_refuses_classes_that_differ(tmp_path):
    from resdepth.train.data import check_data_present

    write_folder(tmp_path)
    for split in ("train", "test"):
        for image in (tmp_path / split / "dog").iterdir():
            image.unlink()
    with pytest.raises(UserError, match="holds one class with images \\(cat\\): a classifier needs at least two"):
        load_dataset(folder_config(tmp_path))
    (tmp_path / "test" / "dog" / "0.tif").write_bytes(b"")  # a class folder with no images it counts
    Image.new("RGB", (32, 32)).save(tmp_path / "train" / "dog" / "0.png")
    message = "only in train: dog\\); a class folder counts once it holds images \\(.bmp, .gif, .jpeg, .jpg, .png"
    with pytest.raises(UserError, match=message):
        check_data_present(folder_config(tmp_path))  # the dry run said "data ready"


def test_a_read_only_folder_is_cached_apart_from_another_with_the_same_names_and_times(tmp_path, monkeypatch):
    # the fallback cache was named by file names, sizes and times only: an archive's fixed dates gave one folder's
    # pixels to another
    import os

    from resdepth.train import data as data_module

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(data_module.os, "access", lambda path, mode: False)  # read-only, even to root
    means = []
    for name, colour in (("a", (200, 10, 10)), ("b", (10, 10, 200))):
        for split in ("train", "test"):
            for cls in ("cat", "dog"):
                (tmp_path / name / split / cls).mkdir(parents=True)
                Image.new("RGB", (32, 32), colour).save(tmp_path / name / split / cls / "0.bmp")
                os.utime(tmp_path / name / split / cls / "0.bmp", ns=(1_577_836_800 * 10**9,) * 2)
        means.append(load_dataset(folder_config(tmp_path / name)).train_images.float().mean(dim=(0, 2, 3)))
    assert means[0][0] > 150 and means[1][2] > 150
    assert len(list((tmp_path / "home" / ".cache" / "resdepth" / "folders").iterdir())) == 2


def test_an_edited_folder_keeps_one_cache_not_one_per_edit(tmp_path):
    write_folder(tmp_path)
    for edit in range(3):
        Image.new("RGB", (32, 32), (edit, 0, 0)).save(tmp_path / "train" / "cat" / f"new{edit}.png")
        load_dataset(folder_config(tmp_path))
    assert len(list(tmp_path.glob(".resdepth-cache-*.pt"))) == 1


def test_a_relative_data_dir_is_recorded_absolute_and_names_the_results_folder(tmp_path, monkeypatch, run_cli):
    # recorded as given, a resume from another folder could not find the data; results went to results/folder
    import json

    write_folder(tmp_path / "images")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    args = ["--depth", "8", "--epochs", "1", "--batch-size", "4", "--threads", "1", "--device", "cpu"]
    code, _, err = run_cli("train", "--dataset", "folder", "--data-dir", "images", *args)
    assert code == 0, err
    config = json.loads((tmp_path / "results" / "images" / "residual-8-s0" / "config.json").read_text())
    assert config["data"]["data_dir"] == str(tmp_path / "images")
    code, _, err = run_cli("train", "--dataset", "folder", "--data-dir", "./images/", *args)  # the same folder
    assert code == 0 and "different config" not in err, err
    monkeypatch.chdir(tmp_path / "elsewhere")
    code, _, err = run_cli("sweep", "--resume", str(tmp_path / "results" / "images"))
    assert code == 0, err


# ------------------------------------------------------------------------------------- a cache that does not fit
def planted_cache(root, **changes):
    """The folder's cache, rewritten with `changes` to its saved values (a cache someone else put there)."""
    events: list = []
    load_dataset(folder_config(root), on_progress=events.append)
    cache = next(e.cache for e in events if e.cache is not None)
    saved = torch.load(cache, weights_only=True)
    saved.update(changes)
    cache.unlink()
    torch.save(saved, cache)
    return cache


@pytest.mark.parametrize("name, changes", [
    ("labels past the classes", {"train_labels": torch.full((6,), 99)}),
    ("negative labels", {"test_labels": torch.full((6,), -1)}),
    ("labels of another type", {"train_labels": torch.zeros(6, dtype=torch.int32)}),
    ("labels of another shape", {"train_labels": torch.zeros(6, 1, dtype=torch.int64)}),
    ("labels that do not follow the files", {"train_labels": torch.tensor([1, 1, 1, 0, 0, 0])}),
    ("float images", {"train_images": torch.zeros(6, 3, 32, 32)}),
    ("images of another size", {"test_images": torch.zeros(6, 3, 28, 28, dtype=torch.uint8)}),
    ("fewer images than files", {"train_images": torch.zeros(5, 3, 32, 32, dtype=torch.uint8),
                                 "train_labels": torch.tensor([0, 0, 0, 1, 1])}),
    ("images that are not a tensor", {"train_images": [1, 2, 3]}),
    ("other classes", {"classes": ["cat", "dog", "eel"]}),
    ("classes that are not names", {"classes": [1, 2]}),
    ("notices that are not text", {"notices": [5]}),
    ("notices that are not a list", {"notices": "note"}),
    ("a key no cache has", {"extra": torch.zeros(1)}),
])
def test_a_cache_that_does_not_fit_its_folder_is_decoded_again(tmp_path, name, changes):
    # it was used as it was: labels of 99 with 2 classes ended the run with "IndexError: Target 99 is out of bounds"
    write_folder(tmp_path)
    planted_cache(tmp_path, **changes)
    events: list = []
    data = load_dataset(folder_config(tmp_path), on_progress=events.append)
    assert [e for e in events if e.notice is None], f"{name}: the cache was used"
    assert not [e for e in events if e.notice], name
    assert data.classes == ["cat", "dog"] and data.train_labels.dtype == torch.int64
    assert data.train_labels.tolist() == data.test_labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert data.train_images.dtype == torch.uint8 and data.test_images.shape == (6, 3, 32, 32)
    assert data.train_images[0, 0, 0, 0] == 200
    again: list = []
    load_dataset(folder_config(tmp_path), on_progress=again.append)
    assert not [e for e in again if e.notice is None]  # the cache written again is a good one


def test_a_cache_names_the_folder_as_it_is_and_its_notices_are_plain_text(tmp_path):
    write_folder(tmp_path / "images")
    planted_cache(tmp_path / "images", name="\x1b]0;owned\x07", notices=["look \x1b[2Jhere"])
    events: list = []
    data = load_dataset(folder_config(tmp_path / "images"), on_progress=events.append)
    assert not [e for e in events if e.notice is None]  # the cache fits: used
    assert data.name == "images" and [e.notice for e in events] == ["look [2Jhere"]  # no ESC: a sequence no more


def test_a_fifo_named_like_an_image_is_refused_not_waited_on(tmp_path):
    # open() of a FIFO blocks until someone writes to it: the load hung for ever
    import os
    import threading

    write_folder(tmp_path)
    os.mkfifo(tmp_path / "train" / "cat" / "9.png")
    outcome: list = []

    def load():
        try:
            load_dataset(folder_config(tmp_path))
        except UserError as exc:
            outcome.append(str(exc))

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "the load waits on the FIFO"
    assert outcome == [f"{tmp_path / 'train' / 'cat' / '9.png'} is not a regular file (a FIFO, device or folder named "
                       "like an image): remove it"]
