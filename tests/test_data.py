"""Data layer: discovery, decoding, cache, split, batch order, and errors on bad input."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from segjax import errors
from segjax.data import decode, layout, sampling, synthetic


def _write(root, name, array, mode=None):
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def _pair(root, stem, h=6, w=5, sub="train"):
    _write(root, f"{sub}/images/{stem}.png", np.full((h, w, 3), 100, np.uint8))
    mask = np.zeros((h, w), np.uint8)
    mask[1:3, 1:3] = 255
    _write(root, f"{sub}/masks/{stem}.png", mask)


def test_discover_pairs_by_stem_and_orders_test_ids_from_sample_submission(demo_dir):
    found = layout.discover(demo_dir)
    assert len(found.train) == 40 and len(found.test) == 9
    assert all(s.image.stem == s.mask.stem for s in found.train)
    assert [s.id for s in found.train] == sorted(s.id for s in found.train)
    csv_ids = [
        line.split(",")[0] for line in (demo_dir / "sample_submission.csv").read_text().split()[1:]
    ]
    assert [s.id for s in found.test] == csv_ids
    assert csv_ids != sorted(csv_ids)  # the demo deliberately shuffles the rows


def test_without_sample_submission_ids_sort_as_strings(tmp_path):
    _pair(tmp_path, "a")
    for name in ("10.png", "9.png", "100.jpg"):
        _write(tmp_path, f"test/images/{name}", np.zeros((4, 4, 3), np.uint8))
    assert [s.id for s in layout.discover(tmp_path).test] == ["10.png", "100.jpg", "9.png"]


def test_plain_images_and_masks_folder(tmp_path):
    _pair(tmp_path, "x", sub=".")
    found = layout.discover(tmp_path)
    assert [s.id for s in found.train] == ["x.png"] and found.test == ()


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "I;16"])
def test_images_of_every_mode_decode_to_rgb_uint8(tmp_path, mode):
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    if mode == "I;16":
        image = Image.fromarray(gray.astype(np.uint16) * 257)  # 16-bit grayscale
    else:
        image = Image.fromarray(gray, "L").convert(mode)
    image.save(tmp_path / "x.png")
    rgb = np.asarray(decode.read_image(tmp_path / "x.png"))
    assert rgb.shape == (6, 8, 3) and rgb.dtype == np.uint8
    np.testing.assert_allclose(rgb[..., 0].astype(int), gray, atol=1)
    assert np.asarray(decode.read_image(tmp_path / "x.png", grayscale=True)).shape == (6, 8)


@pytest.mark.parametrize("encoding", ["0/1", "0/255", "rgb 0/1", "rgb 0/255", "palette"])
def test_masks_are_channel_zero_above_zero_whatever_the_encoding(tmp_path, encoding):
    truth = np.zeros((5, 7), np.uint8)
    truth[1:4, 2:5] = 1
    value = 1 if "0/1" in encoding else 255
    if encoding.startswith("rgb"):
        image = Image.fromarray(np.repeat(truth[..., None] * value, 3, axis=2), "RGB")
    elif encoding == "palette":
        image = Image.fromarray(truth, "L").convert("P")
        image.putpalette([0, 0, 0, 0, 128, 0] + [0] * 762)  # index 1 is green: channel R = 0
    else:
        image = Image.fromarray(truth * value, "L")
    image.save(tmp_path / "m.png")
    np.testing.assert_array_equal(decode.read_mask(tmp_path / "m.png"), truth)


def test_load_resizes_to_non_square_size_and_remembers_original_sizes(demo_dir):
    found = layout.discover(demo_dir)
    arrays = decode.load(found.train[:6], (24, 16))
    assert arrays.images.shape == (6, 24, 16, 3) and arrays.images.dtype == np.uint8
    assert arrays.masks.shape == (6, 24, 16) and set(np.unique(arrays.masks)) <= {0, 1}
    expected = [Image.open(s.image).size[::-1] for s in found.train[:6]]
    assert [tuple(s) for s in arrays.sizes] == expected
    assert len({tuple(s) for s in arrays.sizes}) > 1
    test = decode.load(found.test, (24, 16))
    assert test.masks is None and test.ids == tuple(s.id for s in found.test)


def test_cache_is_reused_and_invalidated(tmp_path, demo_dir):
    root = tmp_path / "d"
    shutil.copytree(demo_dir, root)
    cache = tmp_path / "cache"
    samples = layout.discover(root).train
    first = decode.load(samples, (16, 16), cache_dir=cache)
    files = sorted(cache.glob("*.npy"))
    assert len(files) == 3
    again = decode.load(samples, (16, 16), cache_dir=cache)
    assert isinstance(again.images, np.memmap)  # read back, not decoded again
    np.testing.assert_array_equal(first.images, again.images)
    decode.load(samples, (16, 16), grayscale=True, cache_dir=cache)  # another mode: another key
    assert len(list(cache.glob("*.npy"))) == 6
    blank = np.zeros(np.asarray(Image.open(samples[0].image)).shape[:2] + (3,), np.uint8)
    Image.fromarray(blank).save(samples[0].image)  # the same file replaced
    changed = decode.load(layout.discover(root).train, (16, 16), cache_dir=cache)
    assert changed.images[0].max() == 0 and len(list(cache.glob("*.npy"))) == 9


def test_split_is_seeded_disjoint_and_complete():
    parts = sampling.split(100, seed=1, val_fraction=0.1, test_fraction=0.1)
    assert [len(parts[k]) for k in ("train", "val", "test")] == [80, 10, 10]
    joined = np.concatenate(list(parts.values()))
    assert sorted(joined.tolist()) == list(range(100))
    again = sampling.split(100, seed=1, val_fraction=0.1, test_fraction=0.1)
    assert all(np.array_equal(parts[k], again[k]) for k in parts)
    other = sampling.split(100, seed=2, val_fraction=0.1, test_fraction=0.1)
    assert not np.array_equal(parts["val"], other["val"])


def test_batch_order_is_a_pure_function_of_seed_and_epoch_and_resumes_mid_epoch():
    full = list(sampling.train_batches(23, 4, seed=5, epoch=3))
    assert [i for i, _ in full] == list(range(5))  # 23 // 4: the partial batch is dropped
    assert all(len(b) == 4 for _, b in full)
    assert len(set(np.concatenate([b for _, b in full]).tolist())) == 20
    resumed = list(sampling.train_batches(23, 4, seed=5, epoch=3, start=2))
    assert [(i, b.tolist()) for i, b in resumed] == [(i, b.tolist()) for i, b in full[2:]]
    other_epoch = np.concatenate([b for _, b in sampling.train_batches(23, 4, seed=5, epoch=4)])
    assert other_epoch.tolist() != np.concatenate([b for _, b in full]).tolist()


def test_eval_batches_pad_the_last_batch_and_mark_the_padding():
    batches = list(sampling.eval_batches(7, 3))
    assert [b[0].tolist() for b in batches] == [[0, 1, 2], [3, 4, 5], [6, 0, 0]]
    assert [b[1].tolist() for b in batches][-1] == [True, False, False]


def test_unpaired_files_are_named(tmp_path):
    _pair(tmp_path, "a")
    _write(tmp_path, "train/images/b.png", np.zeros((6, 5, 3), np.uint8))
    _write(tmp_path, "train/masks/c.png", np.zeros((6, 5), np.uint8))
    with pytest.raises(errors.DataError) as err:
        layout.discover(tmp_path)
    assert "b.png: image without a mask" in str(err.value)
    assert "c.png: mask without an image" in str(err.value)
    assert "\n" not in str(err.value)  # one line, as the command line prints it


def test_system_files_are_skipped_and_other_files_named_in_one_warning(tmp_path, recwarn):
    _pair(tmp_path, "a")
    for junk in (".DS_Store", "Thumbs.db"):
        (tmp_path / "train/images" / junk).write_bytes(b"\0\1")
    (tmp_path / "train/images/.ipynb_checkpoints").mkdir()
    assert [s.id for s in layout.discover(tmp_path).train] == ["a.png"]
    assert not [w for w in recwarn if issubclass(w.category, errors.DataWarning)]
    (tmp_path / "train/masks/notes.txt").write_text("labelled by hand")
    (tmp_path / "train/masks/old").mkdir()
    with pytest.warns(errors.DataWarning, match=r"masks: skipped 2 entries .*notes\.txt, old/"):
        assert [s.id for s in layout.discover(tmp_path).train] == ["a.png"]


def test_jpeg_masks_are_thresholded_at_half_because_jpeg_is_lossy(tmp_path):
    values = np.array([[0, 90, 127, 128], [140, 200, 255, 30]], np.uint8).repeat(8, 0).repeat(8, 1)
    path = tmp_path / "m.jpg"
    Image.fromarray(values).save(path, quality=100)
    decoded = np.asarray(Image.open(path))
    np.testing.assert_array_equal(decode.read_mask(path), (decoded > 127).astype(np.uint8))
    assert decode.read_mask(path)[:8, :24].sum() == 0 and decode.read_mask(path)[:8, 24:].all()


def test_truncated_image_is_named_and_nothing_is_cached(tmp_path):
    _pair(tmp_path, "a")
    _pair(tmp_path, "b")
    bad = tmp_path / "train/images/b.png"
    bad.write_bytes(bad.read_bytes()[:40])
    cache = tmp_path / "cache"
    with pytest.raises(errors.DataError, match=r"b\.png: unreadable or truncated"):
        decode.load(layout.discover(tmp_path).train, (4, 4), cache_dir=cache)
    assert not cache.exists() or not list(cache.iterdir())


def test_mask_of_another_size_is_named(tmp_path):
    _pair(tmp_path, "a")
    _write(tmp_path, "train/masks/a.png", np.zeros((7, 5), np.uint8))
    with pytest.raises(errors.DataError, match=r"masks/a\.png: mask is 5x7 .* a\.png is 5x6"):
        decode.load(layout.discover(tmp_path).train, (4, 4))


def test_empty_folders_and_missing_folders(tmp_path):
    (tmp_path / "train/images").mkdir(parents=True)
    (tmp_path / "train/masks").mkdir(parents=True)
    with pytest.raises(errors.DataError, match="no images"):
        layout.discover(tmp_path)
    (tmp_path / "other").mkdir()
    with pytest.raises(errors.DataError, match="expected train/images"):
        layout.discover(tmp_path / "other")
    with pytest.raises(errors.DataError, match="no such data folder"):
        layout.discover(tmp_path / "nowhere")


def test_two_files_with_one_stem(tmp_path):
    _pair(tmp_path, "a")
    _write(tmp_path, "train/images/a.jpg", np.zeros((6, 5, 3), np.uint8))
    with pytest.raises(errors.DataError, match="two files with the stem 'a'"):
        layout.discover(tmp_path)


@pytest.mark.parametrize(
    "text, message",
    [
        ("id,encoded_pixels\n1.png,\n2.png,\n1.png,\n", r"repeated ids 1\.png"),
        (
            "image,encoded_pixels\n1.png,\n",
            r"no column headed 'id' \(header: image,encoded_pixels\)",
        ),
    ],
)
def test_sample_submission_with_repeated_ids_or_no_id_column(tmp_path, text, message):
    _pair(tmp_path, "a")
    for name in ("1.png", "2.png"):
        _write(tmp_path, f"test/images/{name}", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "sample_submission.csv").write_text(text)
    with pytest.raises(errors.DataError, match=r"sample_submission\.csv: " + message):
        layout.discover(tmp_path)


def test_the_id_column_may_be_anywhere(tmp_path):
    _pair(tmp_path, "a")
    for name in ("1.png", "2.png"):
        _write(tmp_path, f"test/images/{name}", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "sample_submission.csv").write_text("encoded_pixels,Id\n,2.png\n,1.png\n")
    assert [s.id for s in layout.discover(tmp_path).test] == ["2.png", "1.png"]


def test_sample_submission_ids_missing_from_test_images(tmp_path):
    _pair(tmp_path, "a")
    _write(tmp_path, "test/images/1.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "sample_submission.csv").write_text("id,encoded_pixels\n1.png,\n2.png,\n")
    with pytest.raises(
        errors.DataError, match=r"sample_submission\.csv: 1 ids have no file.*2\.png"
    ):
        layout.discover(tmp_path)


def test_synthetic_data_is_deterministic_and_has_the_competition_quirks(tmp_path):
    a = synthetic.generate(tmp_path / "a", n_train=36, n_test=4, seed=9)
    b = synthetic.generate(tmp_path / "b", n_train=36, n_test=4, seed=9)
    names = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert names == sorted(p.relative_to(b) for p in b.rglob("*.png"))
    assert all((a / n).read_bytes() == (b / n).read_bytes() for n in names)
    images = [Image.open(p) for p in sorted((a / "train/images").iterdir())]
    assert {im.mode for im in images} == {"RGB", "L", "RGBA"}
    assert len({im.size for im in images}) >= 3 and any(
        w != h for w, h in (im.size for im in images)
    )
    masks = [Image.open(p) for p in sorted((a / "train/masks").iterdir())]
    rgb01 = [np.asarray(m) for m in masks if m.mode == "RGB"]
    assert rgb01 and all(m.max() <= 1 for m in rgb01)
    fractions = [decode.read_mask(p).mean() for p in sorted((a / "train/masks").iterdir())]
    assert 0.03 < np.mean(fractions) < 0.4
    with pytest.raises(FileExistsError):
        synthetic.generate(a, n_train=1, n_test=1)


def test_tfds_source_under_mock_data_gives_binary_masks_at_the_training_size():
    tfds = pytest.importorskip("tensorflow_datasets", reason="pip install -e '.[tfds]'")
    from segjax.config import DataConfig
    from segjax.data import sources

    config = DataConfig(data_dir="tfds:oxford_iiit_pet", image_size=(24, 20))
    with tfds.testing.mock_data(num_examples=5, policy=tfds.testing.MockPolicy.USE_CODE):
        arrays = sources.load_labelled(config)
        test = sources.load_test(config)
        truths = sources.original_masks(config, arrays.ids[:2])
    assert arrays.images.shape == (5, 24, 20, 3) and arrays.images.dtype == np.uint8
    assert arrays.masks.shape == (5, 24, 20) and set(np.unique(arrays.masks)) <= {0, 1}
    assert len(arrays.ids) == 5 and arrays.sizes.shape == (5, 2)
    assert test.masks is None and test.images.shape[1:] == (24, 20, 3)
    assert [t.shape for t in truths] == [tuple(s) for s in arrays.sizes[:2]]
    with pytest.raises(errors.DataError, match="tfds:no_such_dataset"):
        sources.load_labelled(DataConfig(data_dir="tfds:no_such_dataset"))


def test_real_photos_pair_and_decode():
    from tests.conftest import ccp_or_skip

    root = ccp_or_skip()
    found = layout.discover(root)  # the plain images/ + masks/ layout, JPEG images, PNG masks
    assert len(found.train) == 803 and found.test == ()
    arrays = decode.load(found.train[:12], (96, 64))
    assert arrays.images.shape == (12, 96, 64, 3)
    fractions = arrays.masks.reshape(12, -1).mean(axis=1)
    assert np.all((fractions > 0.08) & (fractions < 0.4)), fractions
    assert all(h > w for h, w in arrays.sizes)  # portrait street photos


def test_a_cache_folder_that_cannot_be_written_is_skipped_with_a_warning(tmp_path):
    _pair(tmp_path, "a")
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    with pytest.warns(errors.DataWarning, match=r"cache/arrays: cannot cache decoded images there"):
        arrays = decode.load(layout.discover(tmp_path).train, (4, 4), cache_dir=blocker / "arrays")
    assert arrays.images.shape == (1, 4, 4, 3)
