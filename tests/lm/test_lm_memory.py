"""Loading never holds two copies of the weights (a 9B bf16 model must load in < 24 GB).

Peak resident memory of a fresh process over load + one forward pass (which
touches every weight) must stay near one copy of the weights. One-time costs
(imports, kernel set-up) are paid by a warm-up load before the peak is reset.
"""

from __future__ import annotations

import json
import subprocess
import sys

from safetensors import safe_open
from safetensors.torch import save_file

from glm4voice.lm.tiny import write_tiny_lm

PROBE = r"""
import gc, sys, torch
from glm4voice.lm import load_lm
import transformers.models.glm.modeling_glm  # imports first: they are not part of the load

def rss_kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])

# A first load pays one-time costs (lazy imports, kernel set-up) that are not weights;
# then the peak is reset (clear_refs 5) and the second load is measured.
warm = load_lm(sys.argv[1])
with torch.inference_mode():
    warm(torch.tensor([[1, 2, 3]]))
del warm
gc.collect()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = rss_kb("VmRSS:")
model = load_lm(sys.argv[1])
with torch.inference_mode():
    model(torch.tensor([[1, 2, 3]]))  # touch every weight (safetensors may map them lazily)
print(before, rss_kb("VmHWM:"), sum(p.numel() * p.element_size() for p in model.parameters()))
"""


def test_load_peak_memory_is_about_one_copy(tmp_path):
    # ~55 MB of float32 weights in 8 shards, no tensor above ~2 MB
    src = write_tiny_lm(tmp_path / "src", n_audio=16, hidden=256, layers=8, heads=4, groups=2, ffn=2048)
    dst = tmp_path / "sharded"
    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    with safe_open(str(src / "model.safetensors"), "pt") as f:
        names = list(f.keys())
        weight_map = {}
        for i in range(8):
            part = {k: f.get_tensor(k) for k in names[i::8]}
            fname = f"model-{i + 1:05d}-of-00008.safetensors"
            save_file(part, str(dst / fname))
            weight_map.update(dict.fromkeys(part, fname))
    (dst / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    out = subprocess.run([sys.executable, "-c", PROBE, str(dst)], capture_output=True, text=True, check=True)
    before_kb, peak_kb, weight_bytes = map(int, out.stdout.split())
    growth = (peak_kb - before_kb) * 1024
    assert weight_bytes > 45e6
    print(f"load + forward peak growth: {growth / 1e6:.0f} MB for {weight_bytes / 1e6:.0f} MB of weights")
    assert growth < 1.4 * weight_bytes, f"peak grew {growth / 1e6:.0f} MB for {weight_bytes / 1e6:.0f} MB of weights"
