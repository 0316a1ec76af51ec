"""benchmarks/bench_pipeline.py (the ROS-free whole-pipeline benchmark that benchmarks/gpu_check.sh runs on a GPU):
a short run on the CPU with the shipped models delivers both kinds of output with nothing lost or failed."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_bench():
    spec = importlib.util.spec_from_file_location('bench_pipeline', ROOT / 'benchmarks' / 'bench_pipeline.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_bench_pipeline_runs_the_whole_pipeline_on_the_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))   # simulated afresh, not cached
    bench = load_bench()
    out = tmp_path / 'r.json'
    rc = bench.main(['--sensor', '96x64', '--sim-seconds', '1', '--warmup', '2', '--seconds', '4',
                     '--pose-runtime', 'torch', '--json', str(out)])
    r = json.loads(out.read_text())
    assert rc == 0 and r['processing_errors'] == 0 and r['bad_packets'] == 0
    assert r['device'] == 'cpu' and r['models'] == 'shipped'
    assert r['dense']['count'] >= 4 and r['pose']['count'] >= 1                   # both workers delivered
    assert 0 < r['dense']['latency_ms_p50'] <= r['dense']['latency_ms_p95']
    assert r['pose']['published'] <= r['pose']['count']
    assert r['packets'] >= 1000 * (r['warmup_s'] + r['seconds']) * 0.8           # 1 ms packets, ~real time
    assert r['windows_offered_hz'] >= r['dense']['rate_hz'] > 0


def test_full_size_modules_have_the_official_shapes():
    bench = load_bench()
    m = bench.build_random_full_modules()
    assert m.encoder.embed_dim == 768 and len(m.encoder.backbone.blocks[0]) == 12  # ViT-B/14 (one block chunk)
    assert (m.mast3r.config.enc_embed_dim, m.mast3r.config.dec_embed_dim, m.mast3r.config.dec_depth) == (768, 768, 12)
    assert m.seg_head.in_dim == 1024 and m.seg_head.num_classes == 11
