"""Spatial preparation to 448 x 448: crop/resize, symmetric pad, 4-corner tiling; inverse mapping and intrinsics."""
import numpy as np
import pytest
import torch

from realm_ros.events import SpatialPlan, prepare_input


def ramp(c, h, w):
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing='ij')
    return torch.stack([xx * (k + 1) + 2 * yy for k in range(c)], 0)


def test_crop_resize_centre_and_inverse():
    g = ramp(5, 480, 640)
    prep = prepare_input(g, 448, 'crop')
    assert prep.tensor.shape == (1, 5, 448, 448) and prep.mode == 'crop'
    assert (prep.plan.crop_top, prep.plan.crop_left, prep.plan.crop_side) == (0, 80, 480)
    back = prep.to_sensor(prep.tensor)
    assert back.shape == (5, 480, 640)
    assert torch.isnan(back[:, :, :80]).all() and torch.isnan(back[:, :, 560:]).all()
    inner = back[:, 4:-4, 84:556]
    torch.testing.assert_close(inner, g[:, 4:-4, 84:556], atol=0.6, rtol=1e-3)  # smooth ramp survives resizing
    # an upscaling crop (small sensor) keeps the square
    small = prepare_input(ramp(2, 260, 346), 448, 'crop')
    assert small.plan.crop_side == 260 and small.tensor.shape == (1, 2, 448, 448)


def test_symmetric_pad_and_exact_inverse():
    g = torch.randn(5, 260, 346)
    prep = prepare_input(g, 448, 'pad')
    assert prep.tensor.shape == (1, 5, 448, 448)
    assert prep.plan.pad == (94, 94, 51, 51)
    assert float(prep.tensor[0, :, :94].abs().sum()) == 0 and float(prep.tensor[0, :, :, -51:].abs().sum()) == 0
    assert torch.equal(prep.to_sensor(prep.tensor), g)
    with pytest.raises(ValueError, match="'pad' needs a sensor no larger"):
        prepare_input(torch.zeros(5, 480, 640), 448, 'pad')


def test_four_corner_tiles_and_count_mask_merge():
    g = torch.randn(3, 480, 640)
    prep = prepare_input(g, 448, 'tile')
    assert prep.tensor.shape == (4, 3, 448, 448)
    assert prep.plan.tiles == [(0, 0), (0, 192), (32, 0), (32, 192)]
    torch.testing.assert_close(prep.tensor[3], g[:, 32:, 192:])
    torch.testing.assert_close(prep.to_sensor(prep.tensor), g)  # overlaps agree -> exact
    # tile i predicts the constant i: the merge averages the tiles covering each pixel
    pred = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 1, 448, 448)
    merged = prep.to_sensor(pred)[0]
    assert float(merged[0, 0]) == 0.0 and float(merged[479, 639]) == 3.0
    assert float(merged[100, 300]) == pytest.approx((0 + 1 + 2 + 3) / 4)  # covered by all four
    assert float(merged[10, 300]) == pytest.approx(0.5)  # rows < 32: top tiles only


def test_tile_mode_generalises_to_small_and_large_sensors():
    assert SpatialPlan.create(260, 346, 448, 'tile').num_inputs == 1
    big = SpatialPlan.create(720, 1280, 448, 'tile')
    assert big.num_inputs == 6
    g = torch.randn(2, 720, 1280)
    torch.testing.assert_close(big.to_sensor(big.apply(g)), g)


@pytest.mark.parametrize('mode,h,w', [('crop', 480, 640), ('crop', 260, 346), ('pad', 260, 346),
                                      ('tile', 480, 640), ('tile', 260, 346)])
def test_model_intrinsics_agree_with_pixel_mapping(mode, h, w):
    plan = SpatialPlan.create(h, w, 448, mode)
    K = np.array([[420.0, 0.0, w / 2 + 3.5], [0.0, 415.0, h / 2 - 2.25], [0.0, 0.0, 1.0]])
    rng = np.random.default_rng(0)
    P = np.c_[rng.uniform(-1, 1, 50), rng.uniform(-1, 1, 50), rng.uniform(2, 6, 50)]
    uv = (K @ P.T).T
    u, v = uv[:, 0] / uv[:, 2], uv[:, 1] / uv[:, 2]
    Ks = plan.model_intrinsics(K)
    assert len(Ks) == plan.num_inputs
    for i, Km in enumerate(Ks):
        q = (Km @ P.T).T
        um, vm = plan.sensor_to_model(u, v, i)
        np.testing.assert_allclose(q[:, 0] / q[:, 2], um, atol=1e-9)
        np.testing.assert_allclose(q[:, 1] / q[:, 2], vm, atol=1e-9)
        ub, vb = plan.model_to_sensor(um, vm, i)
        np.testing.assert_allclose(ub, u, atol=1e-9)
        np.testing.assert_allclose(vb, v, atol=1e-9)


@pytest.mark.parametrize('mode,h,w,size', [('crop', 480, 640, 448), ('crop', 260, 346, 448), ('crop', 720, 1280, 224),
                                           ('crop', 640, 480, 448), ('pad', 260, 346, 448), ('tile', 480, 640, 448),
                                           ('tile', 720, 1280, 448), ('tile', 260, 346, 448)])
def test_sensor_region_values_equal_the_full_mapping(mode, h, w, size):
    plan = SpatialPlan.create(h, w, size, mode)
    rows, cols = plan.sensor_region()
    cover = plan.coverage()
    assert cover[rows, cols].all() and cover.sum() == (rows.stop - rows.start) * (cols.stop - cols.start)
    pred = torch.randn(plan.num_inputs, 3, size, size, generator=torch.Generator().manual_seed(h + w))
    full = plan.to_sensor(pred)
    region = plan.to_sensor_region(pred)
    assert region.shape == (3, rows.stop - rows.start, cols.stop - cols.start)
    assert torch.equal(region, full[:, rows, cols])              # bit-identical, not just close
    outside = torch.ones(h, w, dtype=torch.bool)
    outside[rows, cols] = False
    assert torch.isnan(full[:, outside]).all()
    prep = prepare_input(torch.zeros(1, h, w), size, mode)
    assert prep.sensor_region() == (rows, cols)
    one = pred[:, 1:2].contiguous()        # (torch's resize may round differently for another channel count)
    assert torch.equal(prep.to_sensor_region(one), prep.to_sensor(one)[:, rows, cols])
    with pytest.raises(ValueError, match='predictions'):
        plan.to_sensor_region(torch.zeros(plan.num_inputs + 1, 1, size, size))


def test_resize_bilinear_into_a_buffer_equals_interpolate():
    from realm_ros.events.spatial import resize_bilinear
    x = torch.randn(2, 11, 224, 224, generator=torch.Generator().manual_seed(0))
    ref = torch.nn.functional.interpolate(x, size=(480, 480), mode='bilinear', align_corners=False)
    buf = torch.empty(2, 11, 480, 480)
    assert resize_bilinear(x, (480, 480), buf).data_ptr() == buf.data_ptr() and torch.equal(buf, ref)
    with torch.inference_mode():                              # a normal buffer written in inference mode
        assert torch.equal(resize_bilinear(x, (480, 480), buf), ref)
    assert torch.equal(resize_bilinear(x, (480, 480)), ref)
    cl = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(resize_bilinear(cl, (480, 480), buf),
                       torch.nn.functional.interpolate(cl, size=(480, 480), mode='bilinear', align_corners=False))
    g = x.clone().requires_grad_(True)
    y = resize_bilinear(g, (480, 480), buf)                    # autograd: no out= write, a differentiable result
    assert y.requires_grad and y.data_ptr() != buf.data_ptr()
    with pytest.raises(ValueError, match='out must be a contiguous'):
        resize_bilinear(x, (480, 480), torch.empty(2, 11, 480, 481))
    with pytest.raises(ValueError, match='out must be a contiguous'):
        resize_bilinear(x, (480, 480), torch.empty(2, 11, 480, 480, dtype=torch.float64))
    plan = SpatialPlan.create(480, 640, 224, 'crop')
    out = torch.empty(1, 3, 480, 480)
    region = plan.to_sensor_region(x[:1, :3].contiguous(), out=out)
    assert region.data_ptr() == out.data_ptr() and torch.equal(region, plan.to_sensor_region(x[:1, :3].contiguous()))


def test_bad_inputs_are_rejected_with_clear_errors():
    with pytest.raises(ValueError, match='mode'):
        prepare_input(torch.zeros(5, 10, 10), 448, 'stretch')
    with pytest.raises(ValueError, match='C, H, W'):
        prepare_input(torch.zeros(10, 10), 448, 'crop')
    prep = prepare_input(torch.zeros(5, 480, 640), 448, 'tile')
    with pytest.raises(ValueError, match='predictions'):
        prep.to_sensor(torch.zeros(1, 1, 448, 448))
    with pytest.raises(ValueError, match='3x3'):
        prep.model_intrinsics(np.eye(4))
