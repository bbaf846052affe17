"""Photos of any shape to the model's square and back (paste-back), masks from images, label
maps and boxes, animated GIFs."""

import numpy as np
import pytest
from PIL import Image

from stylemapgan.errors import InputError
from stylemapgan.imaging.images import list_images, load_gray, load_labels, save_gif
from stylemapgan.imaging.masks import (
    MaskSpec,
    as_tensor,
    mask_from_box,
    mask_from_image,
    mask_from_labels,
    parse_parts,
)
from stylemapgan.imaging.placement import (
    Placement,
    fit_gray,
    fit_rgb,
    load_image,
    paste_back,
    place,
)


def _ramp(w, h):
    """An RGB photo whose pixel (x, y) is (x, y, 7): positions can be read back."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[..., 0] = np.arange(w)[None, :]
    arr[..., 1] = np.arange(h)[:, None]
    arr[..., 2] = 7
    return Image.fromarray(arr)


# --------------------------------------------------------------------------- fitting
def test_place_crop_pad_stretch_and_boxes():
    assert place((60, 40), 32).square == (10, 0, 50, 40)
    assert place((40, 61), 32).square == (0, 10, 40, 50)
    pad = place((60, 40), 32, "pad")
    assert pad.square == (0, -10, 60, 50) and pad.region == (0, 0, 60, 40)
    assert place((60, 40), 32, "stretch").square == (0, 0, 60, 40)
    boxed = place((100, 80), 32, "crop", box=(10, 20, 50, 40))
    assert boxed.region == (10, 20, 50, 40) and boxed.square == (20, 20, 40, 40)
    with pytest.raises(InputError, match="not inside"):
        place((100, 80), 32, box=(90, 0, 120, 10))
    with pytest.raises(InputError, match="fit"):
        place((10, 10), 32, "zoom")
    pl = place((60, 40), 32, "pad")
    assert Placement.from_dict(pl.to_dict()) == pl
    assert pl.scaled_to(30, 20).square == (0, -5, 30, 25)


def test_fit_rgb_takes_the_right_pixels():
    photo = _ramp(64, 32)
    crop = fit_rgb(photo, place(photo.size, 32))
    assert crop.shape == (32, 32, 3) and crop.dtype == np.uint8
    assert crop[0, 0, 0] == 16 and crop[0, -1, 0] == 47  # columns 16..47: no resampling needed
    padded = fit_rgb(photo, place(photo.size, 64, "pad"))
    assert padded.shape == (64, 64, 3)
    assert (padded[:16, :, 1] == 0).all() and (padded[-16:, :, 1] == 31).all()  # edge repeated
    assert (padded[16:48, :, 1] == np.arange(32)[:, None]).all()
    with pytest.raises(InputError, match="placement"):
        fit_rgb(_ramp(10, 10), place((64, 32), 32))


def test_fit_gray_averages_when_shrinking():
    m = np.zeros((64, 64), np.float32)
    m[:, :32] = 1
    out = fit_gray(m, place((64, 64), 8))
    assert out.shape == (8, 8) and (out[:, :4] == 1).all() and (out[:, 4:] == 0).all()
    m[:, 31] = 0  # a column that straddles a cell: area coverage
    assert fit_gray(m, place((64, 64), 8))[0, 3] == pytest.approx(7 / 8)


@pytest.mark.parametrize(("mode", "fmt", "ext"), [
    ("RGB", "PNG", "png"), ("RGB", "JPEG", "jpg"), ("RGB", "WEBP", "webp"), ("RGB", "BMP", "bmp"),
    ("RGBA", "PNG", "png"), ("L", "PNG", "png"), ("P", "GIF", "gif"), ("I;16", "PNG", "png"),
    ("LA", "PNG", "png"), ("CMYK", "JPEG", "jpg"), ("RGB", "TIFF", "tif"),
])
def test_load_image_accepts_common_formats_and_modes(tmp_path, mode, fmt, ext):
    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 255, (45, 70, 3), dtype=np.uint8))
    img = base.convert(mode) if mode != "I;16" else Image.fromarray(
        (rng.integers(0, 65535, (45, 70))).astype(np.uint16))
    p = tmp_path / f"x.{ext}"
    img.save(p, format=fmt)
    pixels, pl, photo = load_image(p, 32)
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
    assert photo.size == (70, 45) and pl.square == (12, 0, 57, 45)


def test_exif_orientation_is_applied(tmp_path):
    img = _ramp(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img.save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    _, pl, photo = load_image(tmp_path / "r.jpg", 32)
    assert photo.size == (20, 40) and pl.source_size == (20, 40)


def test_bad_images_get_one_line_errors(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    good = tmp_path / "t.png"
    _ramp(50, 50).save(good)
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:80])
    for name, match in (("junk.png", "not an image"), ("cut.png", "truncated|corrupt|decode"),
                        ("missing.png", "no such file")):
        with pytest.raises(InputError, match=match) as e:
            load_image(tmp_path / name, 32)
        assert name in str(e.value) and "\n" not in str(e.value)


def test_list_images(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.png", "a.JPG", ".hidden.png", "notes.txt", "sub/c.webp"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_images([tmp_path])] == ["a.JPG", "b.png"]
    assert [p.name for p in list_images([tmp_path], recursive=True)] == ["a.JPG", "b.png", "c.webp"]
    with pytest.raises(InputError, match="no images"):
        list_images([_empty(tmp_path)])
    with pytest.raises(InputError, match="no such"):
        list_images([tmp_path / "nope"])


def _empty(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    return d


# --------------------------------------------------------------------------- masks
def test_gray_masks_use_alpha_or_luminance(tmp_path):
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[2:5, 2:5, 3] = 255  # a white stroke on a transparent layer
    Image.fromarray(rgba).save(tmp_path / "stroke.png")
    m = load_gray(tmp_path / "stroke.png")
    assert m.sum() == 9 and m[3, 3] == 1
    gray = np.zeros((10, 10), np.uint8)
    gray[:, :5] = 255
    gray[:, 5] = 128
    Image.fromarray(gray).save(tmp_path / "g.png")
    m = load_gray(tmp_path / "g.png")
    assert m[0, 0] == 1 and m[0, 9] == 0 and m[0, 5] == pytest.approx(128 / 255)
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    assert np.allclose(load_gray(tmp_path / "g16.png"), m, atol=1e-3)


def test_label_maps_and_parts(tmp_path):
    assert parse_parts("hair") == [13, 14]
    assert parse_parts("eyes,brows") == [3, 4, 5, 6, 7]
    assert parse_parts("lips, ear, 99") == [8, 9, 10, 11, 12, 15, 99]
    with pytest.raises(InputError, match="unknown part 'beard'.*hair"):
        parse_parts("beard")
    labels = np.zeros((40, 60), np.uint8)
    labels[:10] = 13
    labels[30:, 25:35] = 11
    Image.fromarray(labels).save(tmp_path / "seg.png")
    pal = Image.fromarray(labels, "P")
    pal.putpalette([v for i in range(256) for v in (i * 7 % 256, i * 3 % 256, i)])
    pal.save(tmp_path / "seg_palette.png")
    assert (load_labels(tmp_path / "seg_palette.png") == labels).all()
    Image.fromarray(np.stack([labels] * 3, -1)).save(tmp_path / "seg_rgb.png")
    assert (load_labels(tmp_path / "seg_rgb.png") == labels).all()
    colored = np.stack([labels, labels * 2, labels], -1)
    Image.fromarray(colored).save(tmp_path / "seg_color.png")
    with pytest.raises(InputError, match="single-channel"):
        load_labels(tmp_path / "seg_color.png")
    pl = place((60, 40), 40)  # center crop: columns 10..49
    hair = mask_from_labels(tmp_path / "seg.png", "hair", 40, pl)
    assert (hair[:10] == 1).all() and (hair[10:] == 0).all()
    mouth = mask_from_labels(tmp_path / "seg.png", "mouth", 40, pl)
    assert mouth.sum() == 100 and (mouth[30:, 15:25] == 1).all()
    # A half-size label map of the same photo lines up too.
    Image.fromarray(labels[::2, ::2]).save(tmp_path / "seg_half.png")
    half = mask_from_labels(tmp_path / "seg_half.png", "hair", 40, pl)
    assert np.abs(half - hair).mean() < 0.02  # only the upsampled boundary row is soft
    assert (half[:9] == 1).all() and (half[11:] == 0).all()


def test_mask_images_of_any_size(tmp_path):
    pl = place((60, 40), 32)
    m = np.zeros((40, 60), np.uint8)
    m[:, 30:] = 255
    Image.fromarray(m).save(tmp_path / "full.png")  # photo size
    Image.fromarray(m[::2, ::2]).save(tmp_path / "small.png")  # same aspect, smaller
    sq = np.zeros((32, 32), np.uint8)
    sq[:, 16:] = 255
    Image.fromarray(sq).save(tmp_path / "square.png")  # the model's size: used as is
    a = mask_from_image(tmp_path / "full.png", 32, pl)
    b = mask_from_image(tmp_path / "small.png", 32, pl)
    c = mask_from_image(tmp_path / "square.png", 32, pl)
    assert a.shape == b.shape == c.shape == (32, 32)
    assert np.array_equal(a, c)
    assert np.abs(b - c).mean() < 0.05  # upsampled: soft only along the boundary
    Image.fromarray(np.zeros((50, 50), np.uint8)).save(tmp_path / "wrong.png")
    with pytest.raises(InputError, match=r"50x50 but .*60x40"):
        mask_from_image(tmp_path / "wrong.png", 32, pl, photo="photo.jpg")
    assert mask_from_image(tmp_path / "wrong.png", 32, None).shape == (32, 32)
    with pytest.raises(InputError, match="needs the photo"):
        mask_from_image(tmp_path / "full.png", 32, None)
    soft = mask_from_image(tmp_path / "full.png", 32, pl, threshold=0.5)
    assert set(np.unique(soft)) <= {0.0, 1.0}


def test_box_masks_in_cells_and_pixels():
    cells = mask_from_box("2,1,4,3", 32, units="cells", stylemap_size=8)
    assert cells.sum() == 2 * 2 * 16 and (cells[4:12, 8:16] == 1).all()
    px = mask_from_box("8,4,16,12", 32, units="px")
    assert np.array_equal(px, cells)
    soft = mask_from_box("0,0,2.5,1", 32, units="px")
    assert soft[0, 2] == 0.5 and soft.sum() == 2.5
    with pytest.raises(InputError, match="not inside"):
        mask_from_box("0,0,9,2", 32, units="cells", stylemap_size=8)
    with pytest.raises(InputError, match="four numbers"):
        mask_from_box("1,2,3", 32)
    inv = MaskSpec("box", box="0,0,8,8", units="cells", invert=True).build(32, 8)
    assert inv.max() == 0
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        as_tensor(np.full((4, 4), 1.5, np.float32))


# --------------------------------------------------------------------------- paste-back
def test_paste_back_whole_crop_and_masked():
    photo = _ramp(80, 50)
    pl = place(photo.size, 32)  # square (15, 0, 65, 50)
    result = np.full((32, 32, 3), 200, np.uint8)
    base = np.asarray(photo)
    out = paste_back(photo, result, pl, feather=4)
    assert out.shape == base.shape
    assert np.array_equal(out[:, :15], base[:, :15]) and np.array_equal(out[:, 65:], base[:, 65:])
    assert (out[10:40, 25:55] == 200).all()  # the inside is replaced
    assert (out[0, 30:50] == 200).all()  # the photo's own top edge is not feathered
    assert 0 < np.abs(out[25, 16].astype(int) - 200).max() < 200 - 16  # the seam blends
    # Masked: only the edited area (grown by the feather) changes.
    mask = np.zeros((32, 32), np.float32)
    mask[10:20, 10:20] = 1
    out = paste_back(photo, result, pl, feather=3, mask=mask)
    ys, xs = np.nonzero((out != base).any(-1))
    assert ys.min() >= 15 - 7 and ys.max() <= 31 + 7 and xs.min() >= 30 - 7 and xs.max() <= 46 + 7
    assert (out[20:26, 36:40] == 200).all()
    # Pad: the padding is never pasted.
    pad = place(photo.size, 32, "pad", box=(0, 10, 80, 40))
    out = paste_back(photo, result, pad, feather=0)
    assert np.array_equal(out[:10], base[:10]) and np.array_equal(out[40:], base[40:])
    assert (out[10:40] == 200).all()
    with pytest.raises(InputError, match="photo is"):
        paste_back(_ramp(10, 10), result, pl)


def test_save_gif(tmp_path):
    frames = np.stack([np.full((8, 8, 3), v, np.uint8) for v in (0, 100, 200, 250)])
    p = save_gif(frames, tmp_path / "a.gif", duration_ms=50)
    with Image.open(p) as im:
        assert im.n_frames == 6  # forward and back
        im.seek(3)
        assert np.asarray(im.convert("RGB"))[0, 0, 0] == 250
    with pytest.raises(FileExistsError):
        save_gif(frames, p)


# --------------------------------------------------------------------------- affine placement
def _rotation(size, angle_deg, scale, center):
    """Square -> photo: rotate by ``angle_deg`` and scale about the square's centre, then put
    that centre at ``center`` of the photo."""
    a = np.deg2rad(angle_deg)
    r = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    c = np.array([size / 2, size / 2])
    return np.hstack([r, (np.asarray(center) - r @ c)[:, None]])


def test_affine_placement_maps_and_inverts():
    from stylemapgan.imaging.placement import affine_placement

    m = _rotation(32, 30, 1.5, (40, 30))
    pl = affine_placement((80, 60), 32, m)
    pts = np.array([[0, 0], [32, 0], [16, 16], [5.5, 20.25]])
    assert np.allclose(pl.from_photo(pl.to_photo(pts)), pts)
    assert np.allclose(pl.to_photo([[16, 16]]), [[40, 30]])
    assert Placement.from_dict(pl.to_dict()) == pl
    # The axis-aligned placements are the special case: the same matrix, the same mapping.
    crop = place((60, 40), 32)
    assert np.allclose(crop.to_photo([[0, 0], [32, 32]]), [[10, 0], [50, 40]])
    with pytest.raises(InputError, match="degenerate"):
        affine_placement((80, 60), 32, [[1, 2, 0], [2, 4, 0]])
    with pytest.raises(InputError, match="outside"):
        affine_placement((80, 60), 32, [[1, 0, 500], [0, 1, 0]])


def test_affine_fit_matches_the_axis_aligned_crop():
    """An affine placement equal to a crop samples the same pixels (up to the resampling
    filter), and a scaled copy of the photo gets the same placement by scaled_to."""
    from stylemapgan.imaging.placement import affine_placement

    photo = _ramp(64, 48)
    crop = place(photo.size, 32)
    aff = affine_placement(photo.size, 32, crop.matrix())
    a, b = fit_rgb(photo, crop).astype(int), fit_rgb(photo, aff).astype(int)
    assert np.abs(a - b).mean() < 2.0
    half = aff.scaled_to(32, 24)
    assert np.allclose(half.to_photo([[32, 32]]), aff.to_photo([[32, 32]]) / 2)


def test_affine_paste_back_restores_the_photo_and_keeps_the_rest_exact():
    from stylemapgan.imaging.placement import affine_placement

    rng = np.random.default_rng(0)
    photo = np.array(Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
                     .resize((120, 90), Image.Resampling.BICUBIC))
    pl = affine_placement((120, 90), 32, _rotation(32, 20, 1.6, (60, 45)))
    crop = fit_rgb(Image.fromarray(photo), pl)
    # Pasting the unedited crop back: inside the rotated square the photo comes back closely
    # (it went through a 32 px square), outside it every pixel is exactly the photo's.
    out = paste_back(photo, crop, pl, feather=0)
    inv = pl.from_photo(np.stack(np.meshgrid(np.arange(120) + 0.5, np.arange(90) + 0.5), -1)
                        .reshape(-1, 2)).reshape(90, 120, 2)
    inside = ((inv > 2) & (inv < 30)).all(-1)
    outside = ~((inv > -1) & (inv < 33)).all(-1)
    assert inside.sum() > 1000 and outside.sum() > 1000
    assert np.array_equal(out[outside], photo[outside])
    assert np.abs(out[inside].astype(int) - photo[inside]).mean() < 12
    # An edit inside a mask changes only what the mask (grown by the feather) covers.
    edited = crop.copy()
    edited[8:16, 8:16] = 255 - edited[8:16, 8:16]
    mask = np.zeros((32, 32), np.float32)
    mask[8:16, 8:16] = 1
    out = paste_back(photo, edited, pl, feather=3, mask=mask)
    changed = np.abs(out.astype(int) - photo).max(-1) > 0
    near = ((inv > 8 - 4) & (inv < 16 + 4)).all(-1)
    assert changed.any() and not (changed & ~near).any()
    centre = pl.to_photo([[12, 12]])[0].round().astype(int)
    assert np.abs(out[centre[1], centre[0]].astype(int) - photo[centre[1], centre[0]]).max() > 30


@pytest.mark.parametrize("affine", [False, True])
def test_residual_paste_back_keeps_the_photos_detail(affine):
    """mode="residual" adds G(w_edit) - G(w_src) only: an unchanged result leaves the photo
    exactly as it was (even where the model's reconstruction is poor), and a brightening inside
    the mask brightens the photo there while its fine texture survives."""
    from stylemapgan.imaging.placement import affine_placement

    rng = np.random.default_rng(3)
    photo = rng.integers(40, 200, (90, 120, 3), dtype=np.uint8)  # pure texture: no model has it
    pl = place((120, 90), 32)
    if affine:
        pl = affine_placement((120, 90), 32, _rotation(32, 10, 2.4, (60, 45)))
    recon = np.full((32, 32, 3), 120, np.uint8)  # a reconstruction that knows nothing
    assert np.array_equal(paste_back(photo, recon, pl, mode="residual", reconstruction=recon,
                                     feather=4), photo)
    mask = np.zeros((32, 32), np.float32)
    mask[8:24, 8:24] = 1
    brighter = recon + 30
    out = paste_back(photo, brighter, pl, mask=mask, mode="residual", reconstruction=recon,
                     feather=2).astype(int)
    centre = pl.to_photo([[16, 16]])[0].astype(int)
    patch = (slice(centre[1] - 4, centre[1] + 4), slice(centre[0] - 4, centre[0] + 4))
    delta = out[patch] - photo[patch]
    assert np.abs(delta - 30).max() <= 1  # the change, and the texture underneath is intact
    replaced = paste_back(photo, brighter, pl, mask=mask, feather=2).astype(int)
    assert np.abs(replaced[patch] - 150).max() <= 1  # replace mode shows the flat result
    far = out[:5, :5] if not affine else out[:3, :3]
    assert np.array_equal(far, photo[:far.shape[0], :far.shape[1]])
    with pytest.raises(InputError, match="residual mode needs the reconstruction"):
        paste_back(photo, brighter, pl, mode="residual")
    with pytest.raises(InputError, match="unknown paste-back mode"):
        paste_back(photo, brighter, pl, mode="blend")


def test_masks_of_an_aligned_placement_raise_no_torch_warning(tmp_path):
    """A mask image read for an aligned (affine) placement, as `edit local --align --mask`
    does: PIL's arrays are read-only, and torch.from_numpy warns about those; the maps are
    copied first, so nothing is printed."""
    import warnings

    from stylemapgan.imaging.masks import as_tensor, mask_from_image
    from stylemapgan.imaging.placement import affine_placement, fit_gray

    pl = affine_placement((120, 90), 32, _rotation(32, 20, 1.6, (60, 45)))
    mask = np.zeros((90, 120), np.uint8)
    mask[30:60, 40:80] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    frozen = np.asarray(Image.fromarray(mask)).astype(np.float32) / 255
    frozen.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = mask_from_image(tmp_path / "mask.png", 32, pl)
        assert m.shape == (32, 32) and m.max() == 1.0
        assert np.array_equal(fit_gray(frozen, pl), m)
        assert as_tensor(frozen[:32, :32]).shape == (1, 1, 32, 32)
