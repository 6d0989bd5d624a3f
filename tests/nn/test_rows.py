"""The row form of channels-last maps (:mod:`densenet.nn.rows`): views of the block's buffer and packed rows."""

import pytest
import torch

from densenet.nn import rows


@pytest.mark.parametrize("spatial", [(5,), (3, 4), (2, 3, 2)])
def test_image_of_buffer_columns_is_the_channels_last_view(spatial):
    """``image`` of a strided column view is the ``(N, C, *spatial)`` view the buffer's memory means (the
    reference: ``view`` then ``movedim``), shares its storage, and ``rows_of`` gives the rows back."""
    n, total = 2, 7
    m = n * torch.Size(spatial).numel()
    buffer = torch.randn(m, total, dtype=torch.float64)
    columns = buffer[:, 2:5]  # (M, 3), row stride 7
    got = rows.image(columns, n, spatial)
    expected = buffer.view(n, *spatial, total).movedim(-1, 1)[:, 2:5]
    assert got.shape == expected.shape and got.stride() == expected.stride()
    assert torch.equal(got, expected)
    assert got.data_ptr() == columns.data_ptr()
    assert torch.equal(rows.rows_of(got), columns)


@pytest.mark.parametrize("count", [96, 97, 6])
def test_packed_per_channel_ops_equal_the_plain_broadcast(count):
    """A per-channel ``addcmul`` on packed rows with the vectors repeated equals it on the rows; the factor divides
    the row count (1 for an odd count) and stops once a packed row holds 128 values."""
    width = 16
    x, y = torch.randn(count, width, dtype=torch.float64), torch.randn(count, width, dtype=torch.float64)
    scale, shift = torch.randn(width, dtype=torch.float64), torch.randn(width, dtype=torch.float64)
    factor = rows.pack_factor(count, width)
    assert count % factor == 0
    assert factor * width >= 128 or count % (2 * factor) != 0
    expected = torch.addcmul(shift, x, scale) + y
    got = torch.addcmul(shift.repeat(factor), rows.packed(x, factor), scale.repeat(factor)) + rows.packed(y, factor)
    assert torch.equal(got.view(count, width), expected)


def test_column_image_is_a_channels_last_view_of_the_rows():
    data = torch.randn(10, 4)
    image = rows.column_image(data)
    assert image.shape == (1, 4, 10, 1) and image.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(image[0, :, :, 0].t(), data)
