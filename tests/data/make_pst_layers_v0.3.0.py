"""Written with pst-yolo 0.3.0 (commit ce4f5a5), before the fine-branch refactor: PST layers with every switch, pickled
whole (as Ultralytics pickles its models), with inputs and the eval outputs at k=0 and k=8."""
import torch
import ultralytics.nn.tasks  # noqa: F401
from pst_yolo.modules import PST, C3k2PST
torch.manual_seed(0)
layers = torch.nn.ModuleList([
    PST(48, 64, 64), PST(48, 64, 64, gating=True), PST(48, 64, 64, shared_kv=False), PST(48, 64, 64, attn="relu", k=0),
    PST(48, 64, 64, cpe="nearest", init="default"), C3k2PST(48, 64, 64, pst={"k": 8}, residual_init=0.5),
])
for m in layers.modules():  # trained-looking BatchNorm statistics, so every branch contributes
    if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.uniform_(-0.3, 0.3); m.running_var.uniform_(0.5, 1.5)
        m.weight.data.uniform_(0.5, 1.5); m.bias.data.uniform_(-0.2, 0.2)
layers.eval()
x, u = torch.randn(2, 48, 11, 9), torch.randn(2, 64, 6, 5)
from pst_yolo.runtime import set_topk
outs = {}
with torch.no_grad():
    for k in (0, 8):
        set_topk(layers, k)
        outs[k] = [m([x, u]) for m in layers]
set_topk(layers, 8)
torch.save({"layers": layers, "x": x, "u": u, "outputs": outs, "version": "0.3.0"}, "/work/main/tests/data/pst_layers_v0.3.0.pt")
