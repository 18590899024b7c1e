"""Every Pillow image mode becomes the right 8-bit pixels, in the image-folder loader and in read_image_array
(``forward --image``), or is refused with a clear error."""

import numpy as np
import pytest
from PIL import Image

from ddpmkit.data import DataError, load_dataset, read_image_array, to_8bit

RAMP = np.arange(64, dtype=np.int64).reshape(8, 8) * 4  # 0..252, 8-bit gray


def _save(img, path):
    img.save(path)
    return path


def test_16_bit_grayscale_is_rescaled_not_clipped(tmp_path):
    sixteen = (RAMP * 257).astype(np.uint16)  # the same picture at 16 bits
    path = _save(Image.fromarray(sixteen), tmp_path / "g16.png")
    with Image.open(path) as img:
        assert img.mode in ("I;16", "I")  # what Pillow hands us for a 16-bit PNG
    arr = read_image_array(path)
    assert arr.shape == (1, 8, 8) and arr.dtype == np.uint8
    np.testing.assert_array_equal(arr[0], RAMP)
    ds = load_dataset("image-folder", data_dir=tmp_path, image_size=8, channels=1)
    np.testing.assert_array_equal(ds.x[0, 0].numpy(), RAMP)  # uint8 pixels, as stored
    assert np.array_equal(read_image_array(path, channels=3), np.repeat(RAMP[None], 3, 0))


def test_32_bit_integer_mode_is_read_as_16_bit_and_out_of_range_is_refused():
    img = Image.fromarray((RAMP * 257).astype(np.int32))
    np.testing.assert_array_equal(np.asarray(to_8bit(img, "L")), RAMP)
    with pytest.raises(DataError, match="outside the 16-bit range"):
        to_8bit(Image.fromarray(np.full((4, 4), 70000, np.int32)), "L")


def test_palette_alpha_one_bit_and_cmyk(tmp_path):
    rgb = np.stack([RAMP, 252 - RAMP, np.full_like(RAMP, 100)], -1).astype(np.uint8)
    # palette: an exact palette of the ramp's colours comes back to the same colours
    pal = Image.fromarray(rgb).quantize(colors=256, method=Image.Quantize.MAXCOVERAGE)
    back = np.asarray(to_8bit(pal, "RGB"))
    assert np.array_equal(back, np.asarray(pal.convert("RGB")))
    # alpha is dropped, the colours are kept
    rgba = np.concatenate([rgb, np.zeros_like(rgb[..., :1])], -1)
    assert np.array_equal(np.asarray(to_8bit(Image.fromarray(rgba), "RGB")), rgb)
    la = Image.fromarray(np.stack([RAMP, np.zeros_like(RAMP)], -1).astype(np.uint8))
    assert np.array_equal(np.asarray(to_8bit(la, "L")), RAMP)
    assert np.array_equal(np.asarray(to_8bit(la, "RGB"))[..., 1], RAMP)
    opaque = Image.fromarray(np.stack([RAMP, np.full_like(RAMP, 255)], -1).astype(np.uint8)).convert("La")
    assert opaque.mode == "La" and np.array_equal(np.asarray(to_8bit(opaque, "L")), RAMP)  # premultiplied alpha
    # 1-bit: 0 / 255
    bits = Image.fromarray(RAMP >= 128)
    assert bits.mode == "1"
    assert np.array_equal(np.asarray(to_8bit(bits, "L")), np.where(RAMP >= 128, 255, 0))
    # CMYK (as a JPEG, which the folder loader reads) becomes RGB; pure cyan has no red
    cmyk = Image.new("CMYK", (8, 8), (255, 0, 0, 0))
    path = _save(cmyk, tmp_path / "c.jpg")
    arr = read_image_array(path)
    assert arr.shape == (3, 8, 8) and arr[0].max() < 20 and arr[1].min() > 235 and arr[2].min() > 235
    assert read_image_array(path, channels=1).shape == (1, 8, 8)


def test_float_images_and_non_images_are_refused_clearly(tmp_path):
    with pytest.raises(DataError, match="mode 'F' are not supported"):
        to_8bit(Image.fromarray(np.zeros((4, 4), np.float32)), "L")
    path = _save(Image.fromarray(np.zeros((4, 4), np.float32)), tmp_path / "f.tif")
    with pytest.raises(DataError, match="mode 'F'"):
        read_image_array(path)
    (tmp_path / "t.png").write_text("not an image")
    with pytest.raises(DataError, match="cannot read image"):
        read_image_array(tmp_path / "t.png")
