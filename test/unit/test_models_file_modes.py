"""Exported checkpoints follow the umask like any new file (issue 14 item 8): mkstemp's 0600 must not leak out."""
import os
import stat

import pytest
import torch

from realm_ros.common.files import chmod_like_new_file, current_umask
from realm_ros.models import DepthBinsHead
from realm_ros.models.checkpoints import convert_checkpoint, save_head_checkpoint, write_safetensors


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(params=[0o022, 0o027, 0o002])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def test_current_umask_reads_without_changing(umask):
    assert current_umask() == umask
    assert current_umask() == umask


def test_safetensors_exports_get_the_umask_mode(tmp_path, umask):
    expect = 0o666 & ~umask
    plain = tmp_path / 'plain.bin'
    plain.write_bytes(b'x')
    assert mode(plain) == expect                   # what any other new file gets
    p = write_safetensors(tmp_path / 'a.safetensors', {'w': torch.ones(3)}, {'k': 1})
    assert mode(p) == expect
    head = save_head_checkpoint(tmp_path / 'depth.safetensors', DepthBinsHead(embed_dim=8, bins=4), {},
                                teacher_sha256='a' * 64)
    assert mode(head) == expect
    src = tmp_path / 'model.pth'
    torch.save({'model': {'w': torch.zeros(2)}}, src)
    out = convert_checkpoint(src)
    assert mode(out) == expect == mode(src)        # like the .pt / .pth written by torch.save
    # overwriting keeps following the umask (the temporary file is renamed over the old one)
    os.chmod(p, 0o600)
    write_safetensors(p, {'w': torch.zeros(3)}, {})
    assert mode(p) == expect


def test_mast3r_checkpoint_gets_the_umask_mode(tmp_path, umask):
    from realm_ros.models.mast3r import DuneMast3rConfig, DuneMast3rDecoder, save_dune_mast3r
    path = save_dune_mast3r(tmp_path / 'dec.pth', DuneMast3rDecoder(DuneMast3rConfig.tiny()),
                            dune_backbone_name='test')
    assert mode(path) == 0o666 & ~umask


def test_chmod_like_new_file_custom_mode(tmp_path, umask):
    f = tmp_path / 'f'
    f.write_bytes(b'')
    os.chmod(f, 0o600)
    chmod_like_new_file(f, 0o777)
    assert mode(f) == 0o777 & ~umask
